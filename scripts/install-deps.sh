#!/usr/bin/env bash
# Installs every build and test dependency of Nebula from Debian's packages.
# Idempotent and quiet: packages already present are left alone; apt runs only
# when something is missing. Must run as root (the Makefile calls it when it is).
set -euo pipefail

PKGS=(
  build-essential pkg-config
  libuv1-dev libssl-dev openssl
  libprotobuf-c-dev protobuf-c-compiler
  libopenblas-dev liblapacke-dev
  libyaml-dev libcmocka-dev libjansson-dev libsystemd-dev
  clang libclang-rt-14-dev
  iproute2 python3 time
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
echo "install-deps: done"

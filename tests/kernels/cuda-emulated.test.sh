#!/usr/bin/env bash
# The CUDA backend's tests on the emulated device (tests/cuda_emu/): every
# test_cuda_* binary of tests/kernels with NEBULA_CUDA_MODULE pointing at
# libnebula-cuda-emu.so (the same kernel sources compiled for the host), once
# with each block's threads in thread order and once in reverse order, which
# exposes a shared-memory read that lacks its __syncthreads. On the emulated
# device no test may skip: a skip here is a failure. The same binaries run
# on a real GPU in tests/gpu/run.sh (and skip in `make test` without one).
# A sanitizer build runs thread order only: what it adds is the memory
# checking, which the order does not change, at several times the cost.
set -euo pipefail
build=${NB_BUILD:-build}
fail() { echo "FAIL: $*" >&2; exit 1; }
module="$build/lib/libnebula-cuda-emu.so"
[ -f "$module" ] || fail "missing $module (make builds it)"
module=$(realpath "$module")
shopt -s nullglob
tests=("$build"/tests/kernels/test_cuda_*)
[ ${#tests[@]} -gt 0 ] || fail "no test_cuda_* binaries in $build/tests/kernels"
orders=(forward reverse)
grep -q 'san=1' "$build/config.txt" 2>/dev/null && orders=(forward)
for t in "${tests[@]}"; do
  for order in "${orders[@]}"; do
    log=$(mktemp)
    if ! NEBULA_CUDA_MODULE="$module" NB_CUDA_EMU_ORDER=$order "$t" > "$log" 2>&1; then
      tail -n 40 "$log"; rm -f "$log"; fail "$(basename "$t") on the emulated device ($order order)"
    fi
    if grep -q '^\[  SKIPPED \]' "$log"; then
      tail -n 20 "$log"; rm -f "$log"; fail "$(basename "$t") skipped on the emulated device ($order order)"
    fi
    passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log")
    echo "$(basename "$t") [$order]: ${passed:-0} passed"
    rm -f "$log"
  done
done

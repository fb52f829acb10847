#!/usr/bin/env bash
# tests/gpu/run.sh's bookkeeping, without a GPU: stand-in programs in a
# scratch build directory play the CUDA tests and bench_gpu, and the summary
# must call each step right - every bench line there and finite -> PASS; a
# missing or NaN line, a skipped bench or a skipped test -> FAIL and exit 1;
# a hanging program is cut by the time budget and the run still finishes
# with its summary.
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
b="$tmp/build"
mkdir -p "$b/bench" "$b/lib" "$b/tests/kernels"
: > "$b/lib/libnebula-cuda.so"
lines='bench gpu_attention_vs_matmul_ratio 0.8 x
bench gpu_codec_fp16_vs_memcpy 0.61 x
bench gpu_codec_bf16_vs_memcpy 0.7 x
bench gpu_codec_int8_vs_memcpy 0.4 x
bench gpu_codec_int4_vs_memcpy 0.3 x
bench gpu_codec_topk_vs_memcpy 0.05 x
bench gpu_gpt2_124m_fp32_tokens_per_s 91000 tok/s'
fake_bench() { # $1: the last line (the MFU line, or something else)
  printf '#!/bin/sh\ncat <<X\n%s\n%s\nX\n' "$lines" "$1" > "$b/bench/bench_gpu"
  chmod +x "$b/bench/bench_gpu"
}
run() { # runs the script; its exit status in $rc, the summary in $tmp/out
  rm -rf "$tmp/out"; mkdir -p "$tmp/out"
  rc=0
  NB_BUILD="$b" OUT="$tmp/out" NB_GPU_BUDGET_S=${budget:-200} NB_GPU_PIPE_GLOB="" timeout 60 \
    bash "$root/tests/gpu/run.sh" --skip-build "$@" > "$tmp/stdout" 2>&1 || rc=$?
  [ -f "$tmp/out/gpu-summary.txt" ] || fail "no summary ($*)"
  grep -q '^result: ' "$tmp/out/gpu-summary.txt" || fail "summary without a result line ($*)"
  [ -f "$tmp/out/gpu-logs.tar.gz" ] || fail "no logs archive ($*)"
}
S="$tmp/out/gpu-summary.txt"

fake_bench 'bench gpu_gpt2_124m_fp32_mfu 41.5 %'
run --only bench
[ $rc -eq 0 ] || { cat "$S"; fail "every bench line there, yet exit $rc"; }
grep -q '^step bench_gpu  *PASS' "$S" || fail "bench step not PASS"
[ "$(grep -c '^bench gpu_' "$S")" -eq 8 ] || fail "the summary lacks bench lines"
grep -q '^gpu: ' "$S" || fail "no gpu line"

fake_bench 'bench gpu_gpt2_124m_fp32_mfu nan %'
run --only bench
[ $rc -eq 1 ] || fail "a NaN figure passed"
grep -q '^step bench_gpu  *FAIL.*not finite positive: gpu_gpt2_124m_fp32_mfu=nan' "$S" || fail "NaN not named"

fake_bench '# no MFU line'
run --only bench
[ $rc -eq 1 ] || fail "a missing figure passed"
grep -q 'missing: gpu_gpt2_124m_fp32_mfu' "$S" || fail "the missing figure is not named"

printf '#!/bin/sh\necho "# bench_gpu skipped: no CUDA device (test)"\n' > "$b/bench/bench_gpu"
run --only bench
[ $rc -eq 1 ] || fail "a skipped bench passed"
grep -q 'SKIPPED: # bench_gpu skipped' "$S" || fail "the skip is not reported"

# the CUDA tests: one stand-in per tests/**/test_cuda_*.c; the last skips
shopt -s globstar nullglob
srcs=("$root"/tests/**/test_cuda_*.c)
[ ${#srcs[@]} -gt 0 ] || fail "no test_cuda_* sources"
for s in "${srcs[@]}"; do
  t="$b/${s#"$root"/}"; t=${t%.c}
  mkdir -p "$(dirname "$t")"
  printf '#!/bin/sh\necho "[  PASSED  ] 3 test(s)."\n' > "$t"; chmod +x "$t"
done
run --only tests
[ $rc -eq 0 ] || { cat "$S"; fail "passing tests, yet exit $rc"; }
[ "$(grep -c '^step test_cuda_.* PASS' "$S")" -eq ${#srcs[@]} ] || fail "not every test reported PASS"
printf '#!/bin/sh\necho "[  PASSED  ] 1 test(s)."\necho "[  SKIPPED ] 2 test(s), listed below:"\n' > "$t"
run --only tests
[ $rc -eq 1 ] || fail "a skipped CUDA test passed on the GPU run"
grep -q "^step $(basename "$t") .*FAIL.*SKIPPED 2" "$S" || fail "the skipped test is not named"

# a hanging program: cut at the budget's floor (5 s), the run goes on
printf '#!/bin/sh\nsleep 100\n' > "$t"
budget=1 run --only tests
[ $rc -eq 1 ] || fail "a hanging test passed"
grep -q "^step $(basename "$t") .*FAIL.*timed out" "$S" || fail "the hang is not reported as a time-out"
echo "ok: run.sh's steps, failures, skips and time-outs reported right"

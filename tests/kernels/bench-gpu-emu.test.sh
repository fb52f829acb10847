#!/usr/bin/env bash
# bench_gpu --tiny on the emulated CUDA device (tests/cuda_emu/): the GPU
# benchmark program that tests/gpu/run.sh runs on a real GPU works end to
# end - a few training steps of a tiny GPT through the model API, attention
# against the block's matmuls, every device codec against memcpy - and prints
# every bench line it promises, each with a finite positive value. The
# figures themselves mean nothing on the emulator. Skips (77) when the
# emulated module is missing, or while the CUDA backend still lacks an op a
# part needs (the program then says "not run"; the other parts are checked).
set -euo pipefail
build=${NB_BUILD:-build}
fail() { echo "FAIL: $*" >&2; exit 1; }
module="$build/lib/libnebula-cuda-emu.so"
bench="$build/bench/bench_gpu"
[ -f "$module" ] || { echo "skip: no $module"; exit 77; }
[ -x "$bench" ] || fail "missing $bench (make builds it)"
module=$(realpath "$module")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
NEBULA_CUDA_MODULE="$module" NB_GPU_PEAK_TFLOPS=0.001 timeout --kill-after=5 120 \
  "$bench" --tiny > "$log" 2>&1 || rc=$?
cat "$log"
# A part the backend cannot run yet prints "# bench_gpu: PART not run: ..."
# and makes the exit status 3: the other parts are still checked, then the
# test is skipped, not passed.
not_run=$(sed -n 's/^# bench_gpu: \([a-z0-9]*\) not run: .*/\1/p' "$log" | tr '\n' ' ')
if [ -n "$not_run" ]; then
  [ $rc -eq 3 ] || fail "bench_gpu --tiny exited $rc with parts not run ($not_run)"
else
  [ $rc -eq 0 ] || fail "bench_gpu --tiny exited $rc on the emulated device"
fi
! grep -q '^# bench_gpu skipped' "$log" || fail "bench_gpu found no device with the emulated module"
names=""
case " $not_run " in *" gpt2 "*) ;; *) names="gpu_gpt2_124m_fp32_tokens_per_s gpu_gpt2_124m_fp32_mfu" ;; esac
case " $not_run " in *" attention "*) ;; *) names="$names gpu_attention_vs_matmul_ratio" ;; esac
case " $not_run " in *" codecs "*) ;; *) for c in fp16 bf16 int8 int4 topk; do names="$names gpu_codec_${c}_vs_memcpy"; done ;; esac
for n in $names; do
  v=$(awk -v n="$n" '$1 == "bench" && $2 == n { print $3; exit }' "$log")
  [ -n "$v" ] || fail "no 'bench $n' line"
  awk -v v="$v" 'BEGIN { exit !(v + 0 > 0 && v + 0 < 1e300) }' || fail "bench $n = '$v' is not finite and positive"
done
# no bf16 figure while the model has no bf16 path
! grep -q '^bench gpu_gpt2_124m_bf16' "$log" || fail "a bf16 figure without a bf16 path"
if [ -n "$not_run" ]; then
  echo "skip: the CUDA backend cannot run yet: $not_run(the other parts' lines are fine)"
  exit 77
fi
echo "ok: every bench line of bench_gpu --tiny, finite and positive"

#!/usr/bin/env bash
# Every CPU kernel level this processor runs gives the same bits, end to end:
# nebula-train's final weights under each level forced with NEBULA_CPU_LEVEL
# compare equal at tolerance 0, and the kernel, codec and PyTorch-reference
# tests pass at each level. An unknown or too-high level is refused with the
# reason. (tests/kernels/cpu-emulated.test.sh does the same on emulated
# processors that lack AVX-512 and AVX2.)
set -euo pipefail
build=${NB_BUILD:-build}
train="$build/bin/nebula-train" weights="$build/bin/nebula-weights" tok="$build/bin/nebula-tokenize"
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$train" ] && [ -x "$weights" ] && [ -x "$tok" ] || fail "missing binaries in $build/bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# the levels this processor runs: the best one is what --version shows unforced
best=$(env -u NEBULA_CPU_LEVEL "$train" --version | sed -n 's/.*(kernels \([a-z0-9]*\) blas=.*/\1/p')
case "$best" in
  generic) levels="generic" ;;
  avx2) levels="generic avx2" ;;
  avx512) levels="generic avx2 avx512" ;;
  *) fail "nebula-train --version names no kernel level: $("$train" --version)" ;;
esac
echo "levels on this processor: $levels"

"$tok" /usr/share/common-licenses/GPL-3 "$work/gpl3.tok" > /dev/null
cat > "$work/t.yaml" <<YAML
name: t
role: train
devices: [cpu]
job:
  model: { n_layer: 2, d_model: 48, n_head: 4, d_ff: 96, vocab: 256, max_seq: 24, causal: true,
           norm: pre, head: lm, tie_embeddings: true }
  seed: 11
  data: gpl3.tok
  batch: 6
  seq_len: 24
  steps: 25
  micro_batches: 2
  optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 3, grad_clip: 1.0 }
  log_every: 25
  output: out.weights
YAML
for l in $levels; do
  NEBULA_CPU_LEVEL=$l "$train" --config "$work/t.yaml" > "$work/run.$l.txt"
  grep -q "(kernels $l blas=" "$work/run.$l.txt" || fail "the run forced to $l does not say it ran $l"
  mv "$work/out.weights" "$work/$l.weights"
done
for l in $levels; do
  [ "$l" = generic ] && continue
  "$weights" compare --tol 0 "$work/generic.weights" "$work/$l.weights" > "$work/cmp.txt" || true
  tail -n 1 "$work/cmp.txt"
  grep -q ': equal$' "$work/cmp.txt" || fail "weights trained at $l differ from generic"
done

# the kernel, codec and reference tests at each level
for l in $levels; do
  for t in "$build"/tests/kernels/test_* "$build"/tests/codec/test_cpu_codec "$build"/tests/codec/test_codec_roundtrip; do
    case "$t" in *test_cuda_backend) continue ;; esac
    NEBULA_CPU_LEVEL=$l "$t" > "$work/t.log" 2>&1 || { cat "$work/t.log"; fail "$t at level $l"; }
  done
  echo "kernel and codec tests pass at $l"
done

# refusals name the variable and the reason, with the configuration exit status
set +e
NEBULA_CPU_LEVEL=avx3 "$train" --config "$work/t.yaml" > /dev/null 2> "$work/err.txt"; rc=$?
set -e
[ $rc -eq 78 ] || fail "an unknown level exited $rc, not 78"
grep -q "NEBULA_CPU_LEVEL='avx3' names no kernel level" "$work/err.txt" || fail "no reason for an unknown level: $(cat "$work/err.txt")"
if [ "$best" != avx512 ]; then
  set +e
  NEBULA_CPU_LEVEL=avx512 "$train" --config "$work/t.yaml" > /dev/null 2> "$work/err.txt"; rc=$?
  set -e
  [ $rc -eq 78 ] || fail "a level above the processor's exited $rc, not 78"
  grep -q "this processor and build run at most $best" "$work/err.txt" || fail "no reason for a level too high"
fi

# a checkpoint records the kernels; resuming on other kernels says so
if [ "$best" != generic ]; then
  NEBULA_CPU_LEVEL=$best "$train" --config "$work/t.yaml" --stop-after 10 --checkpoint "$work/c.ckpt" > /dev/null
  NEBULA_CPU_LEVEL=generic "$train" --config "$work/t.yaml" --resume "$work/c.ckpt" > "$work/resume.txt" 2>&1
  grep -q "written with kernels $best blas=.*, resuming with generic blas=" "$work/resume.txt" \
    || fail "a resume on other kernels is not reported: $(cat "$work/resume.txt")"
  "$weights" compare --tol 0 "$work/generic.weights" "$work/out.weights" > "$work/cmp.txt" || true
  tail -n 1 "$work/cmp.txt"
  grep -q ': equal$' "$work/cmp.txt" || fail "resuming at generic after $best changed the weights"
fi
echo "all levels identical"

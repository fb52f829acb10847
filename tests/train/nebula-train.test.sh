#!/usr/bin/env bash
# nebula-train and nebula-tokenize as an operator runs them: progress lines,
# the weights file, identical output for identical runs, and clear errors
# with the right exit status for a bad config or a missing token file.
set -euo pipefail
build=${NB_BUILD:-build}
train="$build/bin/nebula-train" tok="$build/bin/nebula-tokenize"
[ -x "$train" ] && [ -x "$tok" ] || { echo "missing $train or $tok"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
text=/usr/share/common-licenses/GPL-3
"$tok" "$text" "$work/gpl3.tok" | grep -q "tokens (vocabulary 256)"
cat > "$work/t.yaml" <<YAML
name: t
role: train
devices: [cpu]
job:
  model: { n_layer: 1, d_model: 32, n_head: 2, d_ff: 64, vocab: 256, max_seq: 16, causal: true,
           norm: pre, head: lm, tie_embeddings: true }
  seed: 7
  data: gpl3.tok
  batch: 4
  seq_len: 16
  steps: 30
  micro_batches: 2
  optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 3, grad_clip: 1.0 }
  log_every: 10
  output: out.weights
YAML
"$train" --config "$work/t.yaml" > "$work/run1.txt"
cat "$work/run1.txt"
[ "$(grep -c '^step ' "$work/run1.txt")" -eq 4 ]   # steps 1, 10, 20, 30
grep -q '^step    30/30  loss [0-9.]*  lr [0-9.e+-]*  grad_norm [0-9.]*  tokens/s [0-9]*$' "$work/run1.txt"
[ -s "$work/out.weights" ]
[ "$(head -c 4 "$work/out.weights")" = NBWT ]
cp "$work/out.weights" "$work/first.weights"
"$train" --config "$work/t.yaml" --steps 30 > "$work/run2.txt"
cmp "$work/out.weights" "$work/first.weights"          # deterministic
diff <(sed 's/tokens\/s.*//' "$work/run1.txt" | grep '^step') <(sed 's/tokens\/s.*//' "$work/run2.txt" | grep '^step')

# stop after 12 steps with a checkpoint, resume: the same final weights
"$train" --config "$work/t.yaml" --stop-after 12 --checkpoint "$work/c.ckpt" > "$work/run3.txt"
grep -q "stopped after 12 steps" "$work/run3.txt" && grep -q "checkpoint after 12 steps" "$work/run3.txt"
rm -f "$work/out.weights"
"$train" --config "$work/t.yaml" --resume "$work/c.ckpt" > "$work/run4.txt"
cat "$work/run4.txt"
grep -q "resumed from .* after 12 steps" "$work/run4.txt"
cmp "$work/out.weights" "$work/first.weights"
diff <(grep '^step    30/30' "$work/run1.txt" | sed 's/tokens\/s.*//') <(grep '^step    30/30' "$work/run4.txt" | sed 's/tokens\/s.*//')
# a checkpoint of another run is refused
sed 's/seed: 7/seed: 8/' "$work/t.yaml" > "$work/seed8.yaml"
set +e
"$train" --config "$work/seed8.yaml" --resume "$work/c.ckpt" > /dev/null 2> "$work/err.txt"; rc=$?
set -e
cat "$work/err.txt"
[ $rc -eq 78 ] && grep -q "seed is 7 in the file" "$work/err.txt"

# SIGTERM: stops after the current step, writes the checkpoint, exit 143
sed 's/steps: 30/steps: 10000000/' "$work/t.yaml" > "$work/long.yaml"
"$train" --config "$work/long.yaml" --checkpoint "$work/sig.ckpt" > "$work/sig.txt" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q '^step ' "$work/sig.txt" && break; sleep 0.1; done
kill -TERM $pid
set +e
wait $pid; rc=$?
set -e
cat "$work/sig.txt" | tail -2
[ $rc -eq 143 ] && grep -q "interrupted after" "$work/sig.txt"
n=$(sed -n 's/.*checkpoint after \([0-9]*\) steps.*/\1/p' "$work/sig.txt")
[ -n "$n" ] && [ "$n" -ge 1 ]
"$train" --config "$work/long.yaml" --resume "$work/sig.ckpt" --stop-after 1 | grep -q "resumed from .* after $n steps"
! ls "$work" | grep -q '\.tmp$'

# a config that cannot work: exit 78, the field named
sed 's/n_head: 2/n_head: 3/' "$work/t.yaml" > "$work/bad.yaml"
set +e
"$train" --config "$work/bad.yaml" > /dev/null 2> "$work/err.txt"; rc=$?
set -e
cat "$work/err.txt"
[ $rc -eq 78 ] && grep -q "n_head" "$work/err.txt"
# a missing token file: the file named, non-zero exit
sed 's/data: gpl3.tok/data: nothere.tok/' "$work/t.yaml" > "$work/nodata.yaml"
set +e
"$train" --config "$work/nodata.yaml" > /dev/null 2> "$work/err.txt"; rc=$?
set -e
cat "$work/err.txt"
[ $rc -ne 0 ] && grep -q "nothere.tok" "$work/err.txt"
# bad usage
set +e
"$train" > /dev/null 2>&1; rc=$?
"$tok" only-one-arg > /dev/null 2>&1; rc2=$?
set -e
[ $rc -eq 2 ] && [ $rc2 -eq 2 ]
# a missing text: the file named, exit 1; an empty text gives an empty token file
set +e
"$tok" "$work/no-such.txt" "$work/x.tok" 2> "$work/err.txt"; rc=$?
set -e
[ $rc -eq 1 ] && grep -q "no-such.txt" "$work/err.txt" && [ ! -e "$work/x.tok" ]
: > "$work/empty.txt"
"$tok" "$work/empty.txt" "$work/empty.tok" | grep -q ": 0 tokens"
[ "$(stat -c %s "$work/empty.tok")" -eq 32 ]
echo "nebula-train: ok"

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
echo "nebula-train: ok"

#!/usr/bin/env bash
# make demo: trains a small GPT on the GPL-3 licence text that every Debian
# machine has, with the single-process trainer, and shows the loss falling.
# (The pipeline demo with daemons over TLS will replace this.)
#   NB_BUILD    build directory holding bin/ (default: build)
#   DEMO_STEPS  training steps (default 300)
set -euo pipefail
build=${NB_BUILD:-build}
steps=${DEMO_STEPS:-300}
text=/usr/share/common-licenses/GPL-3
for b in nebula-tokenize nebula-train; do
  if [ ! -x "$build/bin/$b" ]; then
    echo "demo: $build/bin/$b is missing; run make first" >&2
    exit 1
  fi
done
if [ ! -r "$text" ]; then
  echo "demo: $text is missing (package base-files); give another text with DEMO_TEXT" >&2
  exit 1
fi
text=${DEMO_TEXT:-$text}
work="$build/demo"
mkdir -p "$work"
"$build/bin/nebula-tokenize" "$text" "$work/gpl3.tok"
# Relative paths in the config resolve against its directory ($work).
cat > "$work/train.yaml" <<YAML
# Written by scripts/demo.sh: a small GPT on byte-level GPL-3 text.
name: demo-train
role: train
devices: [cpu]
log_level: info
job:
  model:
    n_layer: 4
    d_model: 128
    n_head: 4
    d_ff: 512
    vocab: 256
    max_seq: 64
    causal: true
    norm: pre
    head: lm
    tie_embeddings: true
  seed: 1337
  data: gpl3.tok
  batch: 16
  seq_len: 64
  steps: $steps
  micro_batches: 2
  optimizer:
    lr: 1e-3
    min_lr: 1e-4
    warmup_steps: 30
    weight_decay: 0.1
    grad_clip: 1.0
  log_every: 20
  output: demo.weights
YAML
exec "$build/bin/nebula-train" --config "$work/train.yaml"

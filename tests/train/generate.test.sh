#!/usr/bin/env bash
# nebula-generate as a user runs it: a GPT trained by nebula-train on a
# periodic text (the fox sentence, byte-level BPE tokenizer of
# tests/data/tokenizers/bpe) continues a prompt greedily with the known
# answer; the same seed gives the same sample and other seeds others; the
# model exported as GPT-2 safetensors generates the same; --help, --version
# and refusals (bad usage exit 2; a non-causal model, a token beyond the
# vocabulary exit 1, with the reason). The greedy step against PyTorch's
# logits is tests/train/test_generate.c.
set -euo pipefail
. tests/support/assert.sh
build=${NB_BUILD:-build}
gen="$build/bin/nebula-generate" train="$build/bin/nebula-train" tok="$build/bin/nebula-tokenize"
nw="$build/bin/nebula-weights" bpe=tests/data/tokenizers/bpe
[ -x "$gen" ] && [ -x "$train" ] && [ -x "$tok" ] && [ -x "$nw" ] || fail "missing binaries in $build/bin"
nb_work_init generate

"$gen" --help > "$work/help.txt"
expect_grep "usage: nebula-generate" "$work/help.txt"
"$gen" --version > "$work/version.txt"
expect_grep "^nebula-generate [0-9]" "$work/version.txt"

for i in $(seq 3000); do printf 'the quick brown fox jumps over the lazy dog. '; done > "$work/fox.txt"
"$tok" --tokenizer "$bpe" "$work/fox.txt" "$work/fox.tok" > /dev/null
cat > "$work/t.yaml" <<YAML
name: g
role: train
devices: [cpu]
job:
  model: { n_layer: 2, d_model: 64, n_head: 4, d_ff: 128, vocab: 2257, max_seq: 32, causal: true,
           norm: pre, head: lm, tie_embeddings: true }
  seed: 3
  data: fox.tok
  batch: 8
  seq_len: 32
  steps: 150
  optimizer: { lr: 1e-2, min_lr: 1e-3, warmup_steps: 10, grad_clip: 1.0 }
  log_every: 50
  output: fox.weights
YAML
"$train" --config "$work/t.yaml" > "$work/train.log" 2>&1 || fail "training failed: $(tail -3 "$work/train.log")"

# greedy: the known continuation (20 tokens; the context slides past max_seq 32 later)
"$gen" --tokenizer "$bpe" --prompt "the quick brown" --max-new 20 --temperature 0 "$work/fox.weights" \
  > "$work/greedy.txt" 2> "$work/err.txt"
cat "$work/greedy.txt"
[ "$(cat "$work/greedy.txt")" = "the quick brown fox jumps over the lazy dog. the quic" ] ||
  fail "greedy continuation: '$(cat "$work/greedy.txt")'"
"$gen" --tokenizer "$bpe" --prompt "the quick brown" --max-new 60 --temperature 0 "$work/fox.weights" \
  > "$work/long.txt" 2> "$work/err.txt"
expect_grep "^the quick brown fox jumps over the lazy dog. the quick brown fox jumps over the lazy dog. " \
  "$work/long.txt" "60 tokens (past max_seq) do not continue the text"

# sampling: same seed, same output; other seeds, other outputs (a high
# temperature makes the confident model hesitate)
s() { "$gen" --prompt-ids "$1" --max-new 24 --temperature 4 --top-k 50 --seed "$2" "$work/fox.weights" 2> /dev/null; }
a=$(s "496 2111 272" 11) b=$(s "496 2111 272" 11) c=$(s "496 2111 272" 12) d=$(s "496 2111 272" 13)
echo "seed 11: $a"
echo "seed 12: $c"
[ "$a" = "$b" ] || fail "the same seed gave different outputs: '$a' / '$b'"
[ "$a" != "$c" ] || [ "$a" != "$d" ] || fail "seeds 11, 12, 13 gave the same output"
case $a in "496 2111 272 | "*) ;; *) fail "the IDs line does not start with the prompt: '$a'" ;; esac
[ "$(echo "$a" | wc -w)" -eq $((3 + 1 + 24)) ] || fail "want 3 prompt IDs, '|' and 24 new ones: '$a'"

# the same model as GPT-2 safetensors generates the same
"$nw" export "$work/fox.weights" "$work/fox.safetensors" > /dev/null
"$gen" --tokenizer "$bpe" --prompt "the quick brown" --max-new 20 --temperature 0 "$work/fox.safetensors" \
  > "$work/greedy-st.txt" 2> "$work/err.txt"
cmp "$work/greedy.txt" "$work/greedy-st.txt" || fail "the safetensors export generates '$(cat "$work/greedy-st.txt")'"
[ "$(s "496 2111 272" 11)" = "$("$gen" --prompt-ids "496 2111 272" --max-new 24 --temperature 4 --top-k 50 \
  --seed 11 "$work/fox.safetensors" 2> /dev/null)" ] || fail "the safetensors export samples differently"

# refusals
expect_rc 2 "$gen" "$work/fox.weights" > /dev/null 2> "$work/err.txt"
expect_grep "give MODEL and one of --prompt-ids" "$work/err.txt"
expect_rc 2 "$gen" --prompt "x" "$work/fox.weights" > /dev/null 2> "$work/err.txt"
expect_rc 2 "$gen" --prompt-ids "1 x" "$work/fox.weights" > /dev/null 2> "$work/err.txt"
expect_grep "expected token IDs" "$work/err.txt"
expect_rc 2 "$gen" --prompt-ids 1 --temperature -1 "$work/fox.weights" > /dev/null 2> "$work/err.txt"
expect_grep "bad argument '--temperature'" "$work/err.txt"
expect_rc 1 "$gen" --prompt-ids "5000" "$work/fox.weights" > /dev/null 2> "$work/err.txt"
expect_grep "prompt token 0 is 5000, outside the vocabulary 0..2256" "$work/err.txt"
expect_rc 1 "$gen" --prompt-ids 1 "$work/missing.weights" > /dev/null 2> "$work/err.txt"
expect_grep "missing.weights" "$work/err.txt"
sed 's/causal: true/causal: false/; s/head: lm/head: mlm/; s/steps: 150/steps: 2/; s/output: fox.weights/output: mlm.weights/; s/causal: false,/causal: false, mask_token: 1,/' \
  "$work/t.yaml" > "$work/mlm.yaml"
"$train" --config "$work/mlm.yaml" > "$work/mlm.log" 2>&1 || fail "mlm training failed: $(tail -3 "$work/mlm.log")"
expect_rc 1 "$gen" --prompt-ids 1 "$work/mlm.weights" > /dev/null 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep "generation needs a whole causal model with the lm head" "$work/err.txt"
echo ok

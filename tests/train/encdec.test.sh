#!/usr/bin/env bash
# nebula-train on an encoder-decoder job (job.encoder, job.spans;
# docs/finetune.md): a tiny encoder with adapters only and a decoder with
# cross-attention learn span restoration on real text; the progress lines
# and the held-out score; two runs write bit-identical weights (both
# models'); the decoder's weights file (with its cross-attention) loads
# back bit for bit; the encoder's frozen tensors stay bit-identical while
# its adapters train; and the refusals, each with its reason and exit
# status.
set -euo pipefail
. tests/support/assert.sh
build=${NB_BUILD:-build}
train="$build/bin/nebula-train" weights="$build/bin/nebula-weights"
[ -x "$train" ] && [ -x "$weights" ] || fail "missing $train or $weights"
lic=/usr/share/common-licenses
[ -r "$lic/Apache-2.0" ] && [ -r "$lic/MPL-2.0" ] || nb_skip "$lic/Apache-2.0 or MPL-2.0 missing; no text"
nb_work_init encdec
vocab="$PWD/tests/data/tokenizers/minilm"
# job.yaml with the lines of $1 (sed expressions) applied
write() {
  cat > "$work/t.yaml" <<YAML
name: t
role: train
job:
  encoder:
    model: { n_layer: 1, d_model: 32, n_head: 2, vocab: 30522, max_seq: 32, norm: post, gelu: erf }
    freeze: ["*"]
    trainable: ["*.ad_*"]
    adapters: { size: 8, after: [attn, ffn] }
    output: enc.weights
  model: { n_layer: 1, d_model: 32, n_head: 2, vocab: 30522, max_seq: 8, cross_attn: true }
  adapters: { size: 4, after: [xattn] }
  output: dec.weights
  spans:
    text: [$lic/Apache-2.0, $lic/MPL-2.0]
    tokenizer: $vocab
    max_tokens: 3
    eval_windows: 24
  seed: 5
  batch: 8
  micro_batches: 2
  seq_len: 18
  steps: 6
  log_every: 3
  optimizer: { lr: 3e-3, warmup_steps: 1 }
YAML
  if [ $# -gt 0 ]; then sed -i "$1" "$work/t.yaml"; fi
}

write
"$train" --config "$work/t.yaml" > "$work/run1.txt"
cat "$work/run1.txt"
expect_grep '^nebula-train: encoder-decoder job: span restoration on 2 texts (WordPiece, 30522 tokens' "$work/run1.txt"
expect_grep '^nebula-train: encoder: post-LN, 1 layers, d_model 32, .* training 8 of 24 tensors, 1104 parameters' \
  "$work/run1.txt"
expect_grep '^nebula-train: decoder: pre-LN with cross-attention, 1 layers, .* training 28 of 28 tensors' "$work/run1.txt"
[ "$(grep -c '^step ' "$work/run1.txt")" -eq 3 ] || fail "want 3 progress lines (steps 1, 3, 6)"
expect_grep '^step     6/6  loss [0-9.]*  lr [0-9.e+-]*  grad_norm [0-9.]*  pairs/s [0-9]*$' "$work/run1.txt"
expect_grep '^nebula-train: held-out: 24 pairs, loss [0-9.]*, exact match [0-9.]*, token F1 [0-9.]*$' "$work/run1.txt"
[ "$(head -c 4 "$work/enc.weights")" = NBWT ] || fail "no encoder weights file"
expect_grep '^nebula-train: decoder weights written to .*dec.weights$' "$work/run1.txt"
cp "$work/enc.weights" "$work/enc1.weights"
cp "$work/dec.weights" "$work/dec1.weights"
# the decoder's file records its cross-attention (weights version 5)
"$weights" show "$work/dec1.weights" > "$work/show.txt"
expect_grep '^  cross-attention: every block reads an encoder.s output' "$work/show.txt"
[ "$(od -An -tu4 -j4 -N4 "$work/dec1.weights" | tr -d ' ')" = 5 ] || fail "the decoder's file is not version 5"
# generation reads no encoder: a decoder's file is refused with the reason
"$build/bin/nebula-generate" --prompt-ids "101 102" "$work/dec1.weights" > /dev/null 2> "$work/err.txt" &&
  fail "nebula-generate ran a decoder without its encoder"
expect_grep 'generation needs a model without cross-attention' "$work/err.txt"

# the same run again: the same bits
"$train" --config "$work/t.yaml" > "$work/run2.txt"
cmp "$work/enc.weights" "$work/enc1.weights" || fail "two identical runs wrote different encoder weights"
cmp "$work/dec.weights" "$work/dec1.weights" || fail "two identical runs wrote different decoder weights"
diff <(grep '^step\|held-out' "$work/run1.txt" | sed 's/pairs\/s.*//') \
  <(grep '^step\|held-out' "$work/run2.txt" | sed 's/pairs\/s.*//') || fail "two identical runs logged differently"

# --eval-only scores trained weights without training: the two files of
# run 1 as the inits give run 1's held-out line, and nothing is written
write 's/^    output: enc.weights/    output: enc.weights\n    init: enc1.weights/; s/^  seed: 5/  seed: 5\n  init: dec1.weights/'
rm -f "$work/enc.weights" "$work/dec.weights"
"$train" --config "$work/t.yaml" --eval-only > "$work/eval.txt"
cat "$work/eval.txt"
expect_grep '^nebula-train: eval only: no step trained; scoring the encoder of .*/enc1.weights and the decoder of .*/dec1.weights$' \
  "$work/eval.txt"
! grep -q '^step ' "$work/eval.txt" || fail "--eval-only trained"
diff <(grep '^nebula-train: held-out:' "$work/run1.txt") <(grep '^nebula-train: held-out:' "$work/eval.txt") ||
  fail "--eval-only on run 1's weights does not score as run 1 did"
[ ! -e "$work/enc.weights" ] && [ ! -e "$work/dec.weights" ] || fail "--eval-only wrote weights"
expect_grep '^nebula-train: weights not written (0 of 6 steps done)$' "$work/eval.txt"
# a model of one part has no --eval-only
"$build/bin/nebula-tokenize" "$lic/Apache-2.0" "$work/g.tok" > /dev/null
cat > "$work/gpt-eval.yaml" <<YAML
name: g
role: train
job:
  model: { n_layer: 1, d_model: 32, n_head: 2, vocab: 257, max_seq: 8 }
  data: g.tok
  batch: 2
  seq_len: 8
  steps: 1
YAML
expect_rc 2 "$train" --config "$work/gpt-eval.yaml" --eval-only 2> "$work/err.txt"
expect_grep 'eval-only scores an encoder-decoder job' "$work/err.txt"

# frozen means frozen: after 2 and after 6 steps every frozen encoder
# tensor is the same (the seeded init), every adapter tensor has moved
"$train" --config "$work/t.yaml" --steps 2 > "$work/run3.txt"
"$weights" compare --tol 0 "$work/enc.weights" "$work/enc1.weights" > "$work/cmp.txt" || true
cat "$work/cmp.txt"
[ "$(grep -c 'max abs diff' "$work/cmp.txt")" -eq 24 ] || fail "want 24 encoder tensors compared"
if grep -v '\.ad_' "$work/cmp.txt" | grep 'max abs diff' | grep -v 'max abs diff 0,'; then
  fail "a frozen encoder tensor changed"
fi
[ "$(grep '\.ad_' "$work/cmp.txt" | grep -vc 'max abs diff 0,')" -eq 8 ] || fail "want all 8 adapter tensors trained"

# the written decoder loads back as it was trained: a run starting from
# both files with the decoder frozen writes the decoder's file again, every
# one of its 28 tensors bit for bit
write 's/^  seed: 5/  seed: 5\n  init: dec1.weights\n  freeze: ["*"]/; s/    output: enc.weights/    output: enc2.weights\n    init: enc1.weights/; s/  output: dec.weights/  output: dec2.weights/'
"$train" --config "$work/t.yaml" --steps 2 > "$work/back.txt" 2> "$work/back.err"
expect_grep '^nebula-train: decoder: pre-LN with cross-attention, .* from .*dec1.weights; training 0 of 28 tensors' \
  "$work/back.txt"
! grep -q 'without cross-attention' "$work/back.err" || fail "the decoder's file was read as a model without cross-attention"
"$weights" compare --tol 0 "$work/dec2.weights" "$work/dec1.weights" > "$work/cmp.txt" || fail "decoder differs"
[ "$(grep -c 'max abs diff 0,' "$work/cmp.txt")" -eq 28 ] || { cat "$work/cmp.txt"; fail "want 28 equal decoder tensors"; }

# through safetensors (Nebula names): the metadata records cross_attn, the
# import gives the decoder's file back byte for byte, and a job.init from
# the export loads the decoder as it was trained; a cross_attn other than
# 0 or 1 in the metadata is refused
"$weights" export --names nebula "$work/dec1.weights" "$work/dec.safetensors" > /dev/null
"$weights" show "$work/dec.safetensors" > "$work/show.txt"
expect_grep '^  metadata nebula.model: .* tie_embeddings=1 adapters=4,2,0,1 cross_attn=1$' "$work/show.txt"
"$weights" import "$work/dec.safetensors" "$work/dec3.weights" > /dev/null
cmp "$work/dec3.weights" "$work/dec1.weights" || fail "the decoder's safetensors import differs"
sed -i 's/  init: dec1.weights/  init: dec.safetensors/' "$work/t.yaml"
"$train" --config "$work/t.yaml" --steps 2 > "$work/back.txt" 2> "$work/back.err"
! grep -q 'without cross-attention' "$work/back.err" || fail "the decoder's export was read as a model without cross-attention"
cmp "$work/dec2.weights" "$work/dec1.weights" || fail "the decoder from its safetensors export differs"
perl -0777 -pi -e 's/cross_attn=1/cross_attn=2/' "$work/dec.safetensors"
expect_rc 2 "$weights" import "$work/dec.safetensors" "$work/dec3.weights" 2> "$work/err.txt"
expect_grep 'broken nebula.model' "$work/err.txt"

# refusals: the key, the reason, exit status 78 (2 for a bad option)
refused() { # WANT-STATUS PATTERN SED-EXPRESSION [ARGS...]
  local want=$1 pat=$2 ed=$3
  shift 3
  write "$ed"
  expect_rc "$want" "$train" --config "$work/t.yaml" "$@" > "$work/out.txt" 2> "$work/err.txt"
  expect_grep "$pat" "$work/err.txt"
}
refused 78 'job.model.cross_attn: job.model is the decoder of this encoder-decoder job: it needs cross_attn: true' \
  's/, cross_attn: true//'
refused 78 'job.encoder.model.head: an encoder has no head' 's/norm: post, gelu: erf/norm: post, head: mlm/'
refused 78 'job.encoder.model.d_model: 64, but the decoder.s cross-attention (job.model.d_model) reads encoder states of width 32' \
  's/d_model: 32, n_head: 2, vocab: 30522, max_seq: 32/d_model: 64, n_head: 2, vocab: 30522, max_seq: 32/'
refused 78 'job.encoder.adapters.after\[0\] "xattn": the model.s blocks have no cross-attention' \
  's/after: \[attn, ffn\]/after: [xattn]/'
refused 78 'job.encoder.freeze\[0\] "nope\*" matches no tensor of the model' 's/freeze: \["\*"\]/freeze: ["nope*"]/'
refused 78 'freeze every tensor of both models: nothing would train' \
  's/    trainable: \["\*.ad_\*"\]//; s/  adapters: { size: 4, after: \[xattn\] }/  freeze: ["*"]/'
refused 78 'job.model.vocab 1000 is smaller than the vocabulary of job.spans.tokenizer (30522 tokens)' \
  's/max_seq: 8, cross_attn/max_seq: 8, vocab: 1000, cross_attn/; s/n_head: 2, vocab: 30522, max_seq: 8/n_head: 2, max_seq: 8/'
refused 2 'not supported for an encoder-decoder job' '' --checkpoint "$work/ck"

# a decoder pre-trained by an ordinary GPT run (no cross-attention): its
# tensors load, the cross-attention blocks start seeded and train
"$build/bin/nebula-tokenize" --tokenizer "$vocab" "$lic/Apache-2.0" "$work/apache.tok" > /dev/null
cat > "$work/gpt.yaml" <<YAML
name: g
role: train
job:
  model: { n_layer: 1, d_model: 32, n_head: 2, vocab: 30522, max_seq: 8 }
  data: apache.tok
  batch: 4
  seq_len: 8
  steps: 2
  output: gpt.weights
YAML
"$train" --config "$work/gpt.yaml" > /dev/null
# a model without cross-attention exports as before (no cross_attn in its
# metadata), and its export starts a decoder as its weights file does
"$weights" export --names nebula "$work/gpt.weights" "$work/gpt.safetensors" > /dev/null
"$weights" show "$work/gpt.safetensors" > "$work/show.txt"
expect_grep '^  metadata nebula.model: .* tie_embeddings=1$' "$work/show.txt"
# and a decoder's export does not start a model without cross-attention
"$weights" export --names nebula "$work/dec1.weights" "$work/dec4.safetensors" > /dev/null
sed 's/^  output: gpt.weights/  output: gpt2.weights\n  init: dec4.safetensors/' "$work/gpt.yaml" > "$work/gpt2.yaml"
"$train" --config "$work/gpt2.yaml" > /dev/null 2> "$work/err.txt" && fail "a decoder's export started a GPT"
expect_grep "cross_attn is 1 in the pretrained model, 0 in this job.s model" "$work/err.txt"
write 's/^  seed: 5/  seed: 5\n  init: gpt.safetensors/'
"$train" --config "$work/t.yaml" --steps 1 > /dev/null 2> "$work/init.err"
expect_grep 'job.init: .*gpt.safetensors holds a model without cross-attention' "$work/init.err"
write 's/^  seed: 5/  seed: 5\n  init: gpt.weights\n  freeze: ["*"]\n  trainable: ["*.x*", "*.ad_*"]/'
"$train" --config "$work/t.yaml" > "$work/init.txt" 2> "$work/init.err"
cat "$work/init.err"
expect_grep 'job.init: .*gpt.weights holds a model without cross-attention: its tensors loaded, the decoder.s cross-attention and adapter tensors keep their seeded init' \
  "$work/init.err"
expect_grep '^nebula-train: decoder: .* from .*gpt.weights; training 12 of 28 tensors' "$work/init.txt"
expect_grep '^nebula-train: held-out: 24 pairs' "$work/init.txt"
# another model in the file: refused with the first reason
sed -i 's/^  model: { n_layer: 1,/  model: { n_layer: 2,/' "$work/t.yaml"
expect_rc 78 "$train" --config "$work/t.yaml" > "$work/out.txt" 2> "$work/err.txt"
expect_grep 'job.init: .*gpt.weights' "$work/err.txt"
# a GPT file that differs in more than cross-attention: the reason named is
# that difference, not the cross-attention the fallback exists for
write 's/^  seed: 5/  seed: 5\n  init: gpt.safetensors/; s/max_seq: 8, cross_attn: true }/max_seq: 8, cross_attn: true, ln_eps: 1e-6 }/'
expect_rc 78 "$train" --config "$work/t.yaml" > "$work/out.txt" 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep 'job.init: .*gpt.safetensors.*ln_eps' "$work/err.txt"
# the held-out loss is a mean per target token, whatever the batch: 20
# pairs in micro-batches of 8 (a last one of 4 pairs and 4 filler rows) and
# of 4 score the same (lr 1e-30 leaves the weights as seeded)
for mb in 1 2; do
  write "s/eval_windows: 24/eval_windows: 20/; s/micro_batches: 2/micro_batches: $mb/; s/lr: 3e-3/lr: 1e-30/; s/^  steps: 6/  steps: 1/"
  "$train" --config "$work/t.yaml" | grep '^nebula-train: held-out:' > "$work/heldout$mb.txt"
done
cat "$work/heldout1.txt"
cmp -s "$work/heldout1.txt" "$work/heldout2.txt" ||
  fail "the held-out loss depends on the micro-batch: $(cat "$work/heldout1.txt") / $(cat "$work/heldout2.txt")"
echo "encdec: ok"

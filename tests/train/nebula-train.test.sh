#!/usr/bin/env bash
# nebula-train and nebula-tokenize as an operator runs them: progress lines,
# the weights file, identical output for identical runs, checkpoints (stop
# and resume in two and three legs, periodic checkpoints kept to --keep,
# SIGTERM, a killed write's leftovers cleaned up) that resume bit for bit,
# and clear errors with the right exit status for a bad config or a missing
# token file; frozen tensors (job.freeze): reported, kept, resumed, refused;
# adapters (job.adapters) trained alone, refused with the reason; a
# low-rank split (job.lowrank) in the weights file and through a resume.
set -euo pipefail
. tests/support/assert.sh
build=${NB_BUILD:-build}
train="$build/bin/nebula-train" tok="$build/bin/nebula-tokenize"
[ -x "$train" ] && [ -x "$tok" ] || fail "missing $train or $tok"
text=/usr/share/common-licenses/GPL-3
[ -r "$text" ] || nb_skip "$text missing; no training text"
nb_work_init train
"$tok" "$text" "$work/gpl3.tok" > "$work/tok.txt"
expect_grep "tokens (vocabulary 256)" "$work/tok.txt"
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
[ "$(grep -c '^step ' "$work/run1.txt")" -eq 4 ] || fail "want 4 progress lines (steps 1, 10, 20, 30)"
expect_grep '^step    30/30  loss [0-9.]*  lr [0-9.e+-]*  grad_norm [0-9.]*  tokens/s [0-9]*$' "$work/run1.txt"
[ -s "$work/out.weights" ] || fail "no weights file"
[ "$(head -c 4 "$work/out.weights")" = NBWT ] || fail "the weights file does not start with NBWT"
cp "$work/out.weights" "$work/first.weights"
"$train" --config "$work/t.yaml" --steps 30 > "$work/run2.txt"
cmp "$work/out.weights" "$work/first.weights" || fail "two identical runs wrote different weights"
diff <(sed 's/tokens\/s.*//' "$work/run1.txt" | grep '^step') <(sed 's/tokens\/s.*//' "$work/run2.txt" | grep '^step') ||
  fail "two identical runs logged different losses"

# stop after 12 steps with a checkpoint, resume: the same final weights
"$train" --config "$work/t.yaml" --stop-after 12 --checkpoint "$work/c.ckpt" > "$work/run3.txt"
expect_grep "stopped after 12 steps" "$work/run3.txt"
expect_grep "checkpoint after 12 steps written to .*/c.ckpt/step-00000012" "$work/run3.txt"
[ -s "$work/c.ckpt/step-00000012/manifest.json" ] && [ -s "$work/c.ckpt/step-00000012/model.safetensors" ] ||
  fail "no step-00000012/{manifest.json,model.safetensors}"
rm -f "$work/out.weights"
"$train" --config "$work/t.yaml" --resume "$work/c.ckpt/step-00000012" > "$work/run4.txt"
cat "$work/run4.txt"
expect_grep "resumed from .*step-00000012 after 12 steps" "$work/run4.txt"
cmp "$work/out.weights" "$work/first.weights" || fail "stop and resume changed the final weights"
diff <(grep '^step    30/30' "$work/run1.txt" | sed 's/tokens\/s.*//') <(grep '^step    30/30' "$work/run4.txt" | sed 's/tokens\/s.*//') ||
  fail "the resumed run ends with another loss"
# three legs (10 + 10 + 10) through one root, resumed from the root (its
# newest complete checkpoint), with a checkpoint every 4 steps, 2 kept
rm -rf "$work/r" "$work/out.weights"
"$train" --config "$work/t.yaml" --stop-after 10 --checkpoint "$work/r" --checkpoint-every 4 --keep 2 > "$work/leg1.txt"
[ "$(grep -c 'checkpoint after' "$work/leg1.txt")" -eq 3 ] || fail "leg 1: want checkpoints after 4, 8 and 10 steps"
[ "$(ls "$work/r")" = "$(printf 'step-00000008\nstep-00000010')" ] || fail "--keep 2 kept: $(ls "$work/r")"
"$train" --config "$work/t.yaml" --stop-after 20 --resume "$work/r" --checkpoint "$work/r" --keep 2 > "$work/leg2.txt"
expect_grep "resumed from .*step-00000010 after 10 steps" "$work/leg2.txt"
"$train" --config "$work/t.yaml" --resume "$work/r" > "$work/leg3.txt"
expect_grep "resumed from .*step-00000020 after 20 steps" "$work/leg3.txt"
cmp "$work/out.weights" "$work/first.weights" || fail "10 + 10 + 10 steps changed the final weights"
# a killed write leaves an incomplete directory with a temporary file: the
# next run resumes from the newest complete checkpoint and removes it
mkdir -p "$work/r/step-00000024"
head -c 100000 /dev/zero > "$work/r/step-00000024/model.safetensors.tmp"
head -c 1000 /dev/zero > "$work/r/step-00000020/manifest.json.tmp"
"$train" --config "$work/t.yaml" --resume "$work/r" --stop-after 22 --checkpoint "$work/r" --keep 2 > "$work/leg4.txt"
expect_grep "resumed from .*step-00000020 after 20 steps" "$work/leg4.txt"
# resumed and stopped before any step: the checkpoint resumed from is kept
# as it was, not rewritten
before=$(stat -c %Y.%i "$work/r/step-00000022/manifest.json")
"$train" --config "$work/t.yaml" --resume "$work/r" --stop-after 22 --checkpoint "$work/r" > "$work/leg5.txt"
expect_grep "no step taken; the checkpoint resumed from stays .*step-00000022" "$work/leg5.txt"
[ "$(stat -c %Y.%i "$work/r/step-00000022/manifest.json")" = "$before" ] || fail "the checkpoint resumed from was rewritten"
left=$(find "$work/r" -name '*.tmp')
[ -z "$left" ] || fail "stale temporary files left: $left"
[ -d "$work/r/step-00000024" ] || fail "a directory newer than the newest complete checkpoint was removed"
# a checkpoint of another run is refused
sed 's/seed: 7/seed: 8/' "$work/t.yaml" > "$work/seed8.yaml"
expect_rc 78 "$train" --config "$work/seed8.yaml" --resume "$work/c.ckpt" > /dev/null 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep "seed is 7 in the checkpoint, 8 in this run" "$work/err.txt"
# a damaged one too, naming the file (a one-bit flip in the data)
cp -r "$work/c.ckpt/step-00000012" "$work/flip"
python3 - "$work/flip/model.safetensors" <<'PY'
import sys
b = bytearray(open(sys.argv[1], 'rb').read())
b[len(b) // 2] ^= 0x10
open(sys.argv[1], 'wb').write(bytes(b))
PY
expect_rc 1 "$train" --config "$work/t.yaml" --resume "$work/flip" > /dev/null 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep "flip/model.safetensors: SHA-256 .* the file is corrupt" "$work/err.txt"
# nothing to resume from: the path named
expect_rc 1 "$train" --config "$work/t.yaml" --resume "$work/nothing" > /dev/null 2> "$work/err.txt"
expect_grep "nothing" "$work/err.txt"
expect_rc 2 "$train" --config "$work/t.yaml" --checkpoint-every 5 > /dev/null 2>&1

# SIGTERM: stops after the current step, writes the checkpoint, exit 143
sed 's/steps: 30/steps: 10000000/' "$work/t.yaml" > "$work/long.yaml"
# (a killed write's temporary file there is removed at start-up, before
# any checkpoint is written)
mkdir -p "$work/sig.ckpt/step-00000003"
echo partial > "$work/sig.ckpt/step-00000003/model.safetensors.tmp"
"$train" --config "$work/long.yaml" --checkpoint "$work/sig.ckpt" > "$work/sig.txt" 2>&1 &
pid=$!
pids+=($pid)
nb_wait_for 60 grep -q '^step ' "$work/sig.txt" || fail "no progress line within 60 s"
[ ! -e "$work/sig.ckpt/step-00000003/model.safetensors.tmp" ] || fail "a stale temporary file survived the start-up"
kill -TERM $pid
expect_rc 143 wait $pid
tail -n 2 "$work/sig.txt"
expect_grep "interrupted after" "$work/sig.txt"
n=$(sed -n 's/.*checkpoint after \([0-9]*\) steps.*/\1/p' "$work/sig.txt")
[ -n "$n" ] || fail "no checkpoint after SIGTERM"
[ "$n" -ge 1 ] || fail "checkpoint after $n steps"
"$train" --config "$work/long.yaml" --resume "$work/sig.ckpt" --stop-after 1 > "$work/sig-resume.txt"
expect_grep "resumed from .* after $n steps" "$work/sig-resume.txt"
left=$(find "$work" -name '*.tmp')
[ -z "$left" ] || fail "temporary files left behind: $left"

# held-out evaluation: the last 10% of the token file, every 10 steps and at
# the end, on the progress line and in the summary; the training losses are
# those of a run on the first 90% alone (the split is a cut of the file)
sed 's/  output: out.weights/  output: eval.weights\n  eval: { fraction: 0.1, every_steps: 10, batches: 2 }/' \
  "$work/t.yaml" > "$work/eval.yaml"
"$train" --config "$work/eval.yaml" > "$work/eval.txt"
cat "$work/eval.txt"
expect_grep "validation on [0-9]* held-out tokens (the tail of job.data), 2 batches of 2 x 16" "$work/eval.txt"
[ "$(grep -c 'val_loss [0-9.]*$' "$work/eval.txt")" -eq 3 ] || fail "want val_loss at steps 10, 20 and 30"
expect_grep '^step    20/30  loss [0-9.]*  lr .*  val_loss [0-9.]*$' "$work/eval.txt"
expect_no_grep '^step     1/30.*val_loss' "$work/eval.txt"
expect_grep "^nebula-train: validation loss [0-9.]* (step 10) -> [0-9.]* (step 30)$" "$work/eval.txt"
if grep 'val_loss' "$work/eval.txt" | sed 's/.*val_loss //' | grep -qv '^[0-9][0-9.]*$'; then
  fail "a val_loss is not a finite number"
fi
n_all=$(sed -n 's/.*: \([0-9]*\) tokens (vocabulary 256).*/\1/p' "$work/tok.txt")
n_train=$(sed -n 's/.*training on \([0-9]*\) tokens$/\1/p' "$work/eval.txt")
head -c "$n_train" "$text" > "$work/head.txt"
"$tok" "$work/head.txt" "$work/head.tok" > /dev/null
sed 's/data: gpl3.tok/data: head.tok/; s/output: out.weights/output: head.weights/' "$work/t.yaml" > "$work/head.yaml"
"$train" --config "$work/head.yaml" > "$work/head.txt.log"
cmp "$work/eval.weights" "$work/head.weights" ||
  fail "training with 10% held out differs from training on the first $n_train of $n_all tokens"
# a held-out file instead; both at once are refused
sed 's/fraction: 0.1/data: head.tok/' "$work/eval.yaml" > "$work/eval2.yaml"
"$train" --config "$work/eval2.yaml" > "$work/eval2.txt"
expect_grep "validation on $n_train held-out tokens (.*head.tok)" "$work/eval2.txt"
sed 's/fraction: 0.1/fraction: 0.1, data: head.tok/' "$work/eval.yaml" > "$work/eval3.yaml"
expect_rc 78 "$train" --config "$work/eval3.yaml" > /dev/null 2> "$work/err.txt"
expect_grep "eval.fraction and eval.data exclude each other" "$work/err.txt"

# frozen tensors (job.freeze): the run reports what is frozen and the
# smaller gradients and optimizer state; the frozen tensors keep their
# seeded weights; stop and resume give the uninterrupted run's weights; a
# checkpoint of the frozen run is refused by a run that trains everything,
# and a pattern that names no tensor is refused, both with exit 78
sed 's/  output: out.weights/  output: fz.weights\n  freeze: ["wte", "h0.ln?.*", "h0.qkv.*"]/' "$work/t.yaml" > "$work/fz.yaml"
# the same frozen run at another learning rate: the frozen tensors end
# equal (both as seeded), the others apart
sed 's/lr: 3e-3/lr: 1e-2/; s/output: fz.weights/output: fz2.weights/' "$work/fz.yaml" > "$work/fz2.yaml"
"$train" --config "$work/fz.yaml" > "$work/fz.txt"
"$train" --config "$work/t.yaml" --steps 1 > "$work/nofz.txt"
cat "$work/fz.txt"
expect_grep "^nebula-train: frozen: 7 of 16 tensors, 11488 of 17312 parameters; training 5824$" "$work/fz.txt"
expect_grep "^nebula-train: memory: weights 0.07 MiB, gradients 0.02 MiB, optimizer 0.04 MiB$" "$work/fz.txt"
expect_grep "^nebula-train: memory: weights 0.07 MiB, gradients 0.10 MiB, optimizer 0.13 MiB$" "$work/nofz.txt"
"$train" --config "$work/fz2.yaml" > /dev/null
"$build/bin/nebula-weights" compare --tol 0 "$work/fz2.weights" "$work/fz.weights" > "$work/fzcmp.txt" || true
for t in wte h0.ln1.w h0.ln1.b h0.ln2.w h0.ln2.b h0.qkv.w h0.qkv.b; do
  grep -Eq "^  $t +max abs diff 0," "$work/fzcmp.txt" || fail "frozen $t changed: $(grep " $t " "$work/fzcmp.txt")"
done
if grep -Eq "^  (wpe|h0.fc.w|lnf.b) +max abs diff 0," "$work/fzcmp.txt"; then fail "a trainable tensor did not train"; fi
mv "$work/fz.weights" "$work/fz-first.weights"
"$train" --config "$work/fz.yaml" --stop-after 12 --checkpoint "$work/fz.ckpt" > /dev/null
"$train" --config "$work/fz.yaml" --resume "$work/fz.ckpt" > /dev/null
cmp "$work/fz.weights" "$work/fz-first.weights" || fail "stop and resume with frozen tensors changed the final weights"
expect_rc 78 "$train" --config "$work/t.yaml" --resume "$work/fz.ckpt" > /dev/null 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep "tensor 'wte' trains in this run but has no AdamW state in the checkpoint" "$work/err.txt"
sed 's/"h0.qkv.\*"/"h1.qkv.*"/' "$work/fz.yaml" > "$work/fzbad.yaml"
expect_rc 78 "$train" --config "$work/fzbad.yaml" > /dev/null 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep 'job.freeze\[2\] "h1.qkv.\*" matches no tensor of the model' "$work/err.txt"

# adapters (job.adapters) trained alone on the frozen model: reported, the
# pretrained tensors unchanged, the adapters trained; a bad adapter is
# refused at job time with the reason (exit 78)
sed 's/  output: out.weights/  output: ad.weights\n  adapters: { size: 4, after: [attn, ffn] }\n  freeze: ["*"]\n  trainable: ["*.ad_*"]/' "$work/t.yaml" > "$work/ad.yaml"
sed 's/lr: 3e-3/lr: 1e-2/; s/output: ad.weights/output: ad2.weights/' "$work/ad.yaml" > "$work/ad2.yaml"
"$train" --config "$work/ad.yaml" --steps 5 > "$work/ad.txt"
cat "$work/ad.txt"
expect_grep "^nebula-train: frozen: 16 of 24 tensors, 17312 of 17896 parameters; training 584$" "$work/ad.txt"
"$train" --config "$work/ad2.yaml" --steps 5 > /dev/null
"$build/bin/nebula-weights" compare --tol 0 "$work/ad2.weights" "$work/ad.weights" > "$work/adcmp.txt" || true
for t in wte h0.qkv.w h0.fcproj.b lnf.w; do
  grep -Eq "^  $t +max abs diff 0," "$work/adcmp.txt" || fail "frozen $t changed: $(grep " $t " "$work/adcmp.txt")"
done
if grep -Eq "^  h0.ad_ffn.up.w +max abs diff 0," "$work/adcmp.txt"; then fail "the adapter did not train"; fi
grep -Eq "^  h0.ad_ffn.up.w +max abs diff" "$work/adcmp.txt" || fail "the weights files lack the adapters"
# stop and resume give the uninterrupted run's weights; a checkpoint with
# adapters is refused by a run with others, naming them
mv "$work/ad.weights" "$work/ad-first.weights"
"$train" --config "$work/ad.yaml" --steps 5 --stop-after 2 --checkpoint "$work/ad.ckpt" > /dev/null
"$train" --config "$work/ad.yaml" --steps 5 --resume "$work/ad.ckpt" > /dev/null
cmp "$work/ad.weights" "$work/ad-first.weights" || fail "stop and resume with adapters changed the final weights"
sed 's/size: 4/size: 8/' "$work/ad.yaml" > "$work/ad8.yaml"
expect_rc 78 "$train" --config "$work/ad8.yaml" --steps 5 --resume "$work/ad.ckpt" > /dev/null 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep "model.adapters" "$work/err.txt"
# fresh adapters on pretrained weights (a weights file of the model without
# them): the first loss is the pretrained model's
sed 's|  seed: 7|  seed: 7\n  init: out.weights|' "$work/ad.yaml" > "$work/adinit.yaml"
sed 's|  seed: 7|  seed: 7\n  init: out.weights|; s/output: out.weights/output: plain.weights/' "$work/t.yaml" > "$work/plaininit.yaml"
"$train" --config "$work/adinit.yaml" --steps 1 > "$work/adinit.txt"
"$train" --config "$work/plaininit.yaml" --steps 1 > "$work/plaininit.txt"
a1=$(grep -E '^step +1/1 ' "$work/adinit.txt" | awk '{print $4}')
p1=$(grep -E '^step +1/1 ' "$work/plaininit.txt" | awk '{print $4}')
[ -n "$a1" ] && [ "$a1" = "$p1" ] || fail "fresh adapters changed the pretrained model's loss: $a1 vs $p1"
sed 's/size: 4/size: 0/' "$work/ad.yaml" > "$work/adbad.yaml"
expect_rc 78 "$train" --config "$work/adbad.yaml" > /dev/null 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep "job.adapters.size 0: an adapter's bottleneck must be 1..d_model (32) wide" "$work/err.txt"
sed 's/after: \[attn, ffn\]/after: [attn, xattn]/' "$work/ad.yaml" > "$work/adbad.yaml"
expect_rc 78 "$train" --config "$work/adbad.yaml" > /dev/null 2> "$work/err.txt"
expect_grep 'job.adapters.after\[1\] "xattn": the model.s blocks have no cross-attention' "$work/err.txt"

# a low-rank split (job.lowrank): the weights file records it (nebula-weights
# shows it), stop and resume give the uninterrupted run's weights, a run
# with another rank refuses the checkpoint naming model.lowrank, and job.init
# from the split weights needs the same split
sed 's/  output: out.weights/  output: lr.weights\n  lowrank: { block: 0, rank: 4 }/' "$work/t.yaml" > "$work/lr.yaml"
"$train" --config "$work/lr.yaml" --steps 5 > /dev/null
"$build/bin/nebula-weights" show "$work/lr.weights" > "$work/lrshow.txt"
expect_grep "low-rank split: block 0, rank 4" "$work/lrshow.txt"
expect_grep "^  h0.fcproj.v *4 x 64 " "$work/lrshow.txt"
mv "$work/lr.weights" "$work/lr-first.weights"
"$train" --config "$work/lr.yaml" --steps 5 --stop-after 2 --checkpoint "$work/lr.ckpt" > /dev/null
"$train" --config "$work/lr.yaml" --steps 5 --resume "$work/lr.ckpt" > /dev/null
cmp "$work/lr.weights" "$work/lr-first.weights" || fail "stop and resume with a low-rank split changed the final weights"
sed 's/rank: 4/rank: 8/' "$work/lr.yaml" > "$work/lr8.yaml"
expect_rc 78 "$train" --config "$work/lr8.yaml" --steps 5 --resume "$work/lr.ckpt" > /dev/null 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep "model.lowrank (job.lowrank: block, rank; rank 0 no split) is \[0, 4\] in the checkpoint, \[0, 8\]" "$work/err.txt"
sed 's|  seed: 7|  seed: 7\n  init: lr-first.weights|' "$work/lr8.yaml" > "$work/lr8init.yaml"
expect_rc 78 "$train" --config "$work/lr8init.yaml" --steps 1 > /dev/null 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep "lowrank_rank is 4 in the file, 8 in this model" "$work/err.txt"
# exported with Nebula's names the split survives the round trip (its
# metadata says lowrank=0,4); GPT-2's names have none for it
"$build/bin/nebula-weights" export --names nebula "$work/lr-first.weights" "$work/lr.safetensors" > /dev/null
"$build/bin/nebula-weights" import "$work/lr.safetensors" "$work/lr-rt.weights" > /dev/null
"$build/bin/nebula-weights" compare --tol 0 "$work/lr-first.weights" "$work/lr-rt.weights" > /dev/null ||
  fail "a low-rank split changed through export and import"
expect_rc 2 "$build/bin/nebula-weights" export --names gpt2 "$work/lr-first.weights" "$work/lr-g.safetensors" \
  > /dev/null 2> "$work/err.txt"
expect_grep "a model with a low-rank split has no gpt2 names" "$work/err.txt"
sed 's|  seed: 7|  seed: 7\n  init: lr-first.weights|; s/output: lr.weights/output: lr2.weights/' "$work/lr.yaml" > "$work/lrinit.yaml"
"$train" --config "$work/lrinit.yaml" --steps 1 > /dev/null

# a config that cannot work: exit 78, the field named
sed 's/n_head: 2/n_head: 3/' "$work/t.yaml" > "$work/bad.yaml"
expect_rc 78 "$train" --config "$work/bad.yaml" > /dev/null 2> "$work/err.txt"
cat "$work/err.txt"
expect_grep "n_head" "$work/err.txt"
# a missing token file: the file named, non-zero exit
sed 's/data: gpl3.tok/data: nothere.tok/' "$work/t.yaml" > "$work/nodata.yaml"
rc=0
"$train" --config "$work/nodata.yaml" > /dev/null 2> "$work/err.txt" || rc=$?
cat "$work/err.txt"
[ $rc -ne 0 ] || fail "a missing token file: exit 0"
expect_grep "nothere.tok" "$work/err.txt"
# bad usage
expect_rc 2 "$train" > /dev/null 2>&1
expect_rc 2 "$tok" only-one-arg > /dev/null 2>&1
# a missing text: the file named, exit 1; an empty text gives an empty token file
expect_rc 1 "$tok" "$work/no-such.txt" "$work/x.tok" 2> "$work/err.txt"
expect_grep "no-such.txt" "$work/err.txt"
[ ! -e "$work/x.tok" ] || fail "a token file written for a missing text"
: > "$work/empty.txt"
"$tok" "$work/empty.txt" "$work/empty.tok" > "$work/empty-out.txt"
expect_grep ": 0 tokens" "$work/empty-out.txt"
[ "$(stat -c %s "$work/empty.tok")" -eq 32 ] || fail "an empty text: token file of $(stat -c %s "$work/empty.tok") bytes, want 32 (the header)"
echo "nebula-train: ok"

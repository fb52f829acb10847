#!/usr/bin/env bash
# A checkpoint taken with one layer split restores into another: a job runs
# on two clusters (blocks 0-3 and 4-5) with a checkpoint every 50 steps; soon
# after its second checkpoint every daemon is killed (-9), as if the whole run were
# lost. The job is then started again on three clusters with the split the
# coordinator chooses (2+2+2 blocks), after the operator's step of
# docs/operations.md: the newest checkpoint's files copied into every
# stage's checkpoint_dir. The coordinator resumes from that checkpoint, each
# stage takes its tensors by their global names from whichever file holds
# them, and the final weights equal, to the bit, those of nebula-train on the
# same job without any interruption. Then: restarted at its final
# checkpoint, the job runs no step and writes the same final weights; two
# refusals: a checkpoint file damaged by one flipped bit (the stage names the
# file and its digest; no weights are written from it), and a checkpoint of
# another model (the coordinator names the field and does not start).
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
nb_work_init pipe-resplit
nb_on_fail() { nb_tail_logs 20; }
nb_pipe_prepare "$work" "$bin" || exit 1
bash scripts/gen-certs.sh "$work/certs" c >/dev/null
base=$(nb_port_base 40)
cp=$base ap=$((base + 1)) bp=$((base + 2)) ccp=$((base + 3))
steps=400
model="{n_layer: 6, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: false}"
job_section() {
  cat <<YAML
job:
  model: $model
  seed: 21
  data: data.tok
  batch: 4
  seq_len: 16
  steps: $steps
  micro_batches: 2
  schedule: gpipe
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 3, grad_clip: 1.0}
  codecs: {forward: fp32, backward: fp32}
  planner: {enabled: false}
  log_every: 1
YAML
}
coord_yaml() { # $1: the clusters lines
  {
    echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$cp"
    echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
    echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 0.2"; echo "heartbeat_timeout_s: 3"
    echo "connect_timeout_s: 60"; echo "checkpoint_dir: run/coord-ckpt"
    job_section
    echo "  checkpoint: {every_steps: 50, keep: 3}"
    echo "  clusters:"
    printf '%s\n' "$@"
  } > "$work/coord.yaml"
}
for n in a b c; do
  case $n in a) p=$ap ;; b) p=$bp ;; c) p=$ccp ;; esac
  nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 0.2 3 "checkpoint_dir: run/$n-ckpt"
done
{ echo "name: ref"; echo "role: train"; job_section; echo "  output: ref.weights"; } > "$work/ref.yaml"
"$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref.log" 2>&1 || fail "nebula-train"
mkdir -p "$work/run"

# 1. two clusters, killed soon after their second checkpoint
coord_yaml "    - {name: a, address: 127.0.0.1:$ap, layers: 0-3}" "    - {name: b, address: 127.0.0.1:$bp, layers: 4-5}"
start() { "$bin/nebulad" --config "$work/$1.yaml" >> "$work/$1.log" 2>&1 & pids+=($!); eval "pid_$1=$!"; }
start coord; start a; start b
nb_wait_for 120 grep -q "checkpoint at step 100 complete" "$work/coord.log" || fail "1: no checkpoint at step 100 within 120 s"
kill -9 "${pids[@]}" 2>/dev/null || true
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
# the newest complete checkpoint (a later one may have been cut short by the kill)
newest=$("$bin/nebula-weights" checkpoints "$work/run/coord-ckpt" 2>/dev/null |
  awk '$1 == "step" && $3 == "complete" {print $2; exit}' || true)
[ -n "$newest" ] || fail "1: no complete checkpoint listed: $("$bin/nebula-weights" checkpoints "$work/run/coord-ckpt" 2>&1)"
step_dir=$(printf 'step-%08d' "$newest")
echo "# two clusters stopped; newest complete checkpoint: step $newest"
[ -e "$work/run/coord-ckpt/$step_dir/manifest.json" ] || fail "1: no manifest for step $newest"

# 2. three clusters: copy the checkpoint's files to every stage, then start
for n in a b c; do
  mkdir -p "$work/run/$n-ckpt/$step_dir"
  for s in a b; do [ $s = $n ] || cp "$work/run/$s-ckpt/$step_dir"/*.safetensors "$work/run/$n-ckpt/$step_dir/"; done
done
coord_yaml "    - {name: a, address: 127.0.0.1:$ap}" "    - {name: b, address: 127.0.0.1:$bp}" \
  "    - {name: c, address: 127.0.0.1:$ccp}"
mv "$work/coord.log" "$work/coord-first.log"
for n in a b; do mv "$work/$n.log" "$work/$n-first.log"; done
start coord; start a; start b; start c
done_yet() {
  ! grep -q "job failed" "$work/coord.log" || fail "2: job failed: $(grep -m 1 -o 'job failed.*' "$work/coord.log")"
  grep -q "job done" "$work/coord.log"
}
nb_wait_for 180 done_yet || fail "2: the resumed job did not finish within 180 s"
expect_grep "resuming job [0-9]* from its checkpoint at step $newest of $steps" "$work/coord.log"
expect_grep "attempt [0-9]*: resuming from the newest checkpoint at step $newest" "$work/coord.log"
expect_grep "checkpoint at step $steps complete" "$work/coord.log" "2: no final checkpoint"
for n in a b c; do expect_grep "restored 1 stage from .*$step_dir" "$work/$n.log" "2: stage $n did not restore"; done
for n in coord a b c; do "$bin/nebulactl" --socket "$work/run/$n.sock" stop >/dev/null 2>&1 || true; done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()
"$bin/nebula-weights" compare --tol 0 "$work/ref.weights" "$work"/run/[abc]-ckpt/final-stage*.weights \
  > "$work/compare.log" 2>&1 || { cat "$work/compare.log"; fail "2: final weights differ from the uninterrupted run"; }
tail -n 1 "$work/compare.log"
echo "ok 1: a checkpoint of 2 clusters (blocks 0-3, 4-5) resumed on 3 (2+2+2); final weights equal"

# the final checkpoint's files gathered in one place: nebula-weights
# verifies and merges them into one file, from which nebula-train resumes
# (no step left: it writes the model), equal to the uninterrupted run
final_dir=$(printf 'step-%08d' $steps)
mkdir -p "$work/gather/$final_dir"
cp "$work/run/coord-ckpt/$final_dir/manifest.json" "$work/gather/$final_dir/"
for n in a b c; do cp "$work/run/$n-ckpt/$final_dir"/stage-*.safetensors "$work/gather/$final_dir/"; done
"$bin/nebula-weights" verify "$work/gather/$final_dir" > "$work/verify.log" 2>&1 || fail "verify: $(cat "$work/verify.log")"
"$bin/nebula-weights" merge "$work/gather/$final_dir" "$work/merged" > "$work/merge.log" 2>&1 || fail "merge: $(cat "$work/merge.log")"
sed -i "s#^  output: ref.weights#  output: merged.weights#" "$work/ref.yaml"
"$bin/nebula-train" --config "$work/ref.yaml" --resume "$work/merged" > "$work/resume.log" 2>&1 ||
  fail "nebula-train --resume of the merged pipeline checkpoint: $(tail -n 3 "$work/resume.log")"
"$bin/nebula-weights" compare --tol 0 "$work/ref.weights" "$work/merged.weights" > "$work/compare.log" 2>&1 ||
  { cat "$work/compare.log"; fail "the merged pipeline checkpoint differs from the uninterrupted run"; }
echo "ok 1b: the pipeline's final checkpoint merged into one file equals nebula-train's model"

# 3. the run's final checkpoint with one bit flipped in stage 0's file:
# a restarted job resumes from it (nothing to train: every stage only
# writes its final weights), and stage a refuses the file, naming it
last_dir=$(ls "$work/run/coord-ckpt" | sort | tail -n 1)
[ "$last_dir" = "$(printf 'step-%08d' $steps)" ] || fail "3: the newest checkpoint is $last_dir, not the final one"
rm -f "$work"/run/*-ckpt/final-*
# first undamaged: the restarted job only writes the final weights again
for n in coord a b c; do : > "$work/$n.log"; done
start coord; start a; start b; start c
nb_wait_for 120 done_yet || fail "3: the job restarted at its end did not finish"
expect_no_grep " step [0-9]*/$steps" "$work/coord.log" "3: a step ran again although the checkpoint is final"
for n in coord a b c; do "$bin/nebulactl" --socket "$work/run/$n.sock" stop >/dev/null 2>&1 || true; done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()
"$bin/nebula-weights" compare --tol 0 "$work/ref.weights" "$work"/run/[abc]-ckpt/final-stage*.weights \
  > "$work/compare.log" 2>&1 || { cat "$work/compare.log"; fail "3: final weights from the final checkpoint differ"; }
rm -f "$work"/run/*-ckpt/final-*
victim="$work/run/a-ckpt/$last_dir/stage-0.safetensors"
[ -e "$victim" ] || fail "3: no $victim"
python3 - "$victim" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) - 100] ^= 0x10
open(p, "wb").write(b)
PY
for n in coord a b c; do : > "$work/$n.log"; done
start coord; start a; start b; start c
nb_wait_for 120 grep -q "job failed" "$work/coord.log" || fail "3: the job started from a damaged checkpoint"
expect_grep "stage-0.safetensors.*\(SHA-256\|sha256\)" "$work/a.log" "3: stage a did not name the damaged file and its digest"
expect_no_grep "job done" "$work/coord.log"
if ls "$work"/run/a-ckpt/final-* >/dev/null 2>&1; then fail "3: stage a wrote weights from a damaged checkpoint"; fi
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
pids=()
echo "ok 2: restarted at its final checkpoint, the job wrote the same final weights and ran no step"
echo "ok 3: $(grep -o 'stage 0 from checkpoint.*' "$work/a.log" | head -n 1 | cut -c1-200)"

# 4. a checkpoint of another model: the coordinator refuses to start
sed -i 's/d_ff: 64/d_ff: 128/' "$work/coord.yaml"
set +e; "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord4.log" 2>&1; rc=$?; set -e
[ $rc -ne 0 ] || fail "4: the coordinator started over a checkpoint of another model"
expect_grep "holds a checkpoint of another run (job.model differs" "$work/coord4.log"
echo "ok 4: $(grep -o 'checkpoint_dir .*' "$work/coord4.log" | head -n 1 | cut -c1-120)"

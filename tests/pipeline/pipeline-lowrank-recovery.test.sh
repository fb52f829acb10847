#!/usr/bin/env bash
# Recovery of a low-rank split job (job.lowrank, docs/lowrank.md) from its
# checkpoint: a coordinator and two stage daemons (chain, over TLS) train a
# small GPT split in block 1 at rank 8, cut at the factor (stage a ends with
# h1.fcproj.v and sends 8 floats per position), with a checkpoint every 5
# steps. Stage a is killed (-9) after the checkpoint of step 10 and
# restarted: both stages go back to that checkpoint (the manifest records
# the split, the stage files hold the factors under their own names), and
# the final weights equal, to the bit, those of nebula-train on the same job
# without a break.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
steps=40
nb_work_init pipe-lowrank-rec
stop_all() {
  touch "$work/run/stop" 2>/dev/null || true
  local f
  for f in "$work"/run/*.pid; do
    [ -e "$f" ] || continue
    kill -9 "$(cat "$f")" 2>/dev/null || true
  done
}
trap 'stop_all; nb_work_cleanup' EXIT
nb_on_fail() { nb_tail_logs 20; }
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 40)
cp=$base ap=$((base + 1)) bp=$((base + 2))
job_section() {
  cat <<YAML
job:
  model: {n_layer: 4, d_model: 64, n_head: 4, d_ff: 128, vocab: 256, max_seq: 32, tie_embeddings: false}
  lowrank: {block: 1, rank: 8}
  seed: 23
  data: data.tok
  batch: 8
  seq_len: 32
  steps: $steps
  micro_batches: 2
  schedule: 1f1b
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 3, grad_clip: 1.0}
  codecs: {forward: fp32, backward: fp32}
  planner: {enabled: false}
  log_every: 1
YAML
}
mkdir -p "$work/run"
{
  echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$cp"
  echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
  echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 0.2"; echo "heartbeat_timeout_s: 2"
  echo "connect_timeout_s: 30"; echo "checkpoint_dir: run/coord-ckpt"
  job_section
  echo "  checkpoint: {every_steps: 5, keep: 2}"
  echo "  recovery_timeout_s: 120"
  echo "  clusters:"
  echo "    - {name: a, address: 127.0.0.1:$ap, layers: 0-1}"
  echo "    - {name: b, address: 127.0.0.1:$bp, layers: 2-3}"
} > "$work/coord.yaml"
for n in a b; do
  p=$ap; [ $n = b ] && p=$bp
  nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 0.2 2 "checkpoint_dir: run/$n-ckpt"
done
{ echo "name: ref"; echo "role: train"; job_section; echo "  output: run/ref.weights"; } > "$work/ref.yaml"
"$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref.log" 2>&1 || fail "nebula-train: $(tail -n 3 "$work/ref.log")"

supervise() { # restarts nebulad NAME 1 s after any end but exit 0
  local n=$1
  while :; do
    "$bin/nebulad" --config "$work/$n.yaml" >> "$work/$n.log" 2>&1 &
    echo $! > "$work/run/$n.pid"
    local st=0
    wait $! || st=$?
    if [ $st -eq 0 ] || [ $st -eq 78 ] || [ -e "$work/run/stop" ]; then break; fi
    sleep 1
  done
}
for n in coord a b; do : > "$work/$n.log"; done
pids=()
for n in coord a b; do supervise $n & pids+=($!); done
failed() { ! grep -q "job failed" "$work/coord.log" || fail "job failed: $(grep -m 1 -o 'job failed.*' "$work/coord.log")"; }
ckpt10() { # the coordinator refusing the job (exit 78) ends its loop
  failed
  kill -0 "${pids[0]}" 2>/dev/null || fail "the coordinator ended: $(grep -m 1 -o 'ERROR.*' "$work/coord.log" || true)"
  grep -q "checkpoint at step 10 complete" "$work/coord.log"
}
nb_wait_for 180 ckpt10 || fail "no checkpoint at step 10"
kill -9 "$(cat "$work/run/a.pid")"
! grep -q "job done" "$work/coord.log" || fail "the job ended before the kill (30 steps after the checkpoint)"
done_() { failed; grep -q "job done" "$work/coord.log"; }
nb_wait_for 300 done_ || fail "the job did not finish after the kill"
touch "$work/run/stop"
for n in coord a b; do "$bin/nebulactl" --socket "$work/run/$n.sock" stop >/dev/null 2>&1 || true; done
for p in "${pids[@]}"; do wait "$p" || true; done
expect_grep "resuming from the newest checkpoint" "$work/coord.log" "the kill did not recover from a checkpoint"
grep -h "fault in attempt\|resuming from\|recovered in" "$work/coord.log" | sed 's/^/#   /'
"$bin/nebula-weights" show "$work/run/a-ckpt/final-stage0.weights" > "$work/show.txt"
expect_grep "low-rank split: block 1, rank 8" "$work/show.txt"
expect_grep "^  h1.fcproj.v  *8 x 128 " "$work/show.txt"
"$bin/nebula-weights" compare --tol 0 "$work/run/ref.weights" "$work"/run/[ab]-ckpt/final-stage*.weights \
  > "$work/compare.log" 2>&1 || { cat "$work/compare.log"; fail "final weights differ from nebula-train without a break"; }
tail -n 1 "$work/compare.log"
echo "ok: a low-rank split job killed after its checkpoint ends with nebula-train's weights, bit for bit"

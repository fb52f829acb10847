#!/usr/bin/env bash
# Recovery with stateful lossy codecs (delta bases on the activations,
# error feedback on the gradients): a run with faults equals, to the bit, the
# same pipeline job run without them. A coordinator and two stage daemons
# (chain, over TLS) run the job twice with a checkpoint every 6 steps:
#   1. no fault: the reference;
#   2. stage b paused (SIGSTOP) past the heartbeat timeout at step 12: the
#      step in flight is dropped and the codec streams go back to their
#      state at the last commit, on both sides (from memory); then stage a
#      killed (-9) at step 30 and restarted 1 s later: every stage goes back
#      to the checkpoint, codec streams included (extra tensors "codec.cutL.*"
#      of the stage files).
# A stream reset instead of restored (the state would start from zero) makes
# the weights differ.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
steps=50
nb_work_init pipe-codec-rec
stop_all() {
  touch "$work/run/stop" 2>/dev/null || true
  local f
  for f in "$work"/run/*.pid; do
    [ -e "$f" ] || continue
    kill -CONT "$(cat "$f")" 2>/dev/null || true
    kill -9 "$(cat "$f")" 2>/dev/null || true
  done
}
trap 'stop_all; nb_work_cleanup' EXIT
nb_on_fail() { nb_tail_logs 20; }
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 40)
cp=$base ap=$((base + 1)) bp=$((base + 2))
{
  echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$cp"
  echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
  echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 0.2"; echo "heartbeat_timeout_s: 2"
  echo "connect_timeout_s: 30"; echo "checkpoint_dir: run/coord-ckpt"
  cat <<YAML
job:
  model: {n_layer: 4, d_model: 64, n_head: 4, d_ff: 128, vocab: 256, max_seq: 32, tie_embeddings: false}
  seed: 17
  data: data.tok
  batch: 8
  seq_len: 32
  steps: $steps
  micro_batches: 2
  schedule: 1f1b
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 3, grad_clip: 1.0}
  codecs: {forward: "int8(delta)", backward: "fp16(topk(0.25),ef)"}
  planner: {enabled: false}
  log_every: 1
  checkpoint: {every_steps: 6, keep: 2}
  recovery_timeout_s: 120
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
    - {name: b, address: 127.0.0.1:$bp}
YAML
} > "$work/coord.yaml"
for n in a b; do
  p=$ap; [ $n = b ] && p=$bp
  nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 0.2 2 "checkpoint_dir: run/$n-ckpt"
done
supervise() { # restarts nebulad NAME 1 s after any end but exit 0
  local n=$1
  while :; do
    "$bin/nebulad" --config "$work/$n.yaml" >> "$work/$n.log" 2>&1 &
    echo $! > "$work/run/$n.pid"
    local st=0
    wait $! || st=$?
    if [ $st -eq 0 ] || [ $st -eq 78 ] || [ -e "$work/run/stop" ]; then break; fi # 78: RestartPreventExitStatus
    sleep 1
  done
}
at_step() { grep -o " step [0-9]*/$steps" "$work/coord.log" | tail -n 1 | grep -o "[0-9]*" | head -n 1; }
reached() {
  ! grep -q "job failed" "$work/coord.log" || fail "job failed: $(grep -m 1 -o 'job failed.*' "$work/coord.log")"
  grep -q "job done" "$work/coord.log" || [ "$(at_step 2>/dev/null || echo 0)" -ge "$1" ] 2>/dev/null
}
run() { # $1 name, $2 yes: inject the faults
  rm -rf "$work/run"; mkdir -p "$work/run"
  for n in coord a b; do : > "$work/$n.log"; done
  pids=()
  for n in coord a b; do supervise $n & pids+=($!); done
  if [ "$2" = yes ]; then
    nb_wait_for 120 reached 12 || fail "$1: step 12 not reached"
    kill -STOP "$(cat "$work/run/b.pid")"; sleep 3.5; kill -CONT "$(cat "$work/run/b.pid")"
    nb_wait_for 120 reached 30 || fail "$1: step 30 not reached"
    kill -9 "$(cat "$work/run/a.pid")"
  fi
  nb_wait_for 300 reached 999999 || fail "$1: the job did not finish"
  touch "$work/run/stop"
  for n in coord a b; do "$bin/nebulactl" --socket "$work/run/$n.sock" stop >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do wait "$p" || true; done
  pids=()
  mkdir -p "$work/$1"
  cp "$work"/run/[ab]-ckpt/final-stage*.weights "$work/$1/"
  cp "$work/coord.log" "$work/$1/coord.log"
}
run ref no
run faults yes
expect_grep "resuming from the daemons' memory" "$work/faults/coord.log" "the pause did not recover from memory"
expect_grep "resuming from the newest checkpoint" "$work/faults/coord.log" "the kill did not recover from a checkpoint"
grep -h "fault in attempt\|resuming from\|recovered in" "$work/faults/coord.log" | sed 's/^/#   /'
for s in 0 1; do
  "$bin/nebula-weights" compare --tol 0 "$work/ref/final-stage$s.weights" "$work/faults/final-stage$s.weights" \
    > "$work/compare.log" 2>&1 || { cat "$work/compare.log"; fail "stage $s: weights differ from the run without faults"; }
done
echo "ok: with error feedback and delta codecs, a pause and a kill -9 leave the final weights equal to the run without them"

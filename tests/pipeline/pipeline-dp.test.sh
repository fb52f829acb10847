#!/usr/bin/env bash
# Data parallel inside a stage daemon, end to end over mutually
# authenticated TLS: a coordinator and two stage daemons train a small GPT
# (2 stages, 1F1B, micro-batches of 3 sequences) twice, once with one device
# per daemon and once with `devices: [cpu, cpu]` on both (two replicas of
# each stage, the micro-batch split 2 + 1). The loss of every step, as the
# head's daemon logs it at full precision, matches within 1e-6 relative;
# both daemons say they run 2 replicas; the status socket shows them; and
# the replicated run still writes one set of final weights per stage, close
# to the single-replica one; the held-out losses (job.eval, on each stage's
# first replica) match within 1e-3. A stage with two CUDA devices (the
# emulated device, two of them) opens both and runs two replicas.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
nb_work_init pipe-dp
nb_on_fail() { nb_tail_logs 20; }
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 20)
steps=8

run() { # $1 name, $2 devices of each stage daemon
  local name=$1 devices=$2
  local cp=$base ap=$((base + 1)) bp=$((base + 2))
  base=$((base + 3))
  rm -rf "$work/run"
  mkdir -p "$work/run"
  cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 1
heartbeat_timeout_s: 5
connect_timeout_s: 120
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: false}
  seed: 5
  data: data.tok
  batch: 6
  seq_len: 16
  steps: $steps
  micro_batches: 2
  schedule: 1f1b
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 2, grad_clip: 1.0}
  codecs: {forward: fp32, backward: fp32}
  log_every: 4
  eval: {fraction: 0.1, every_steps: 4, batches: 2}
  topology: chain
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
    - {name: b, address: 127.0.0.1:$bp}
YAML
  local n p
  for n in a b; do
    p=$ap; [ $n = b ] && p=$bp
    nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 1 5 "checkpoint_dir: run/$n-weights" \
      "devices: $devices" "log_level: debug"
  done
  pids=()
  "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/a.yaml" > "$work/a-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/b.yaml" > "$work/b-$name.log" 2>&1 & pids+=($!)
  done_or_failed() {
    ! grep -q "job failed" "$work/coord-$name.log" || fail "$name: job failed"
    grep -q "job done" "$work/coord-$name.log"
  }
  nb_wait_for 300 done_or_failed || fail "$name: no 'job done' within 300 s"
  "$bin/nebulactl" --socket "$work/run/b.sock" status --json > "$work/status-$name.json" ||
    fail "$name: nebulactl status"
  for s in "$work/run/coord.sock" "$work/run/a.sock" "$work/run/b.sock"; do
    "$bin/nebulactl" --socket "$s" stop >/dev/null || fail "$name: stop $s"
  done
  for p in "${pids[@]}"; do wait "$p" || fail "$name: a daemon exited with status $?"; done
  pids=()
  sed -n 's/.* step \([0-9]*\) loss \([-0-9.e+a-z]*\)$/\1 \2/p' "$work/b-$name.log" > "$work/loss-$name.txt"
  [ "$(wc -l < "$work/loss-$name.txt")" -eq $steps ] ||
    fail "$name: the head's daemon logged $(wc -l < "$work/loss-$name.txt") step losses, not $steps"
  sed -n 's/.* step \([0-9]*\)\/[0-9]* .* val_loss \([0-9.]*\)$/\1 \2/p' "$work/coord-$name.log" > "$work/val-$name.txt"
  [ "$(wc -l < "$work/val-$name.txt")" -eq 2 ] || fail "$name: the coordinator logged no held-out loss after steps 4 and 8"
  mkdir -p "$work/weights-$name"
  cp "$work"/run/*-weights/final-stage*.weights "$work/weights-$name/"
}

run one "[cpu]"
run two "[cpu, cpu]"
for n in a b; do
  grep -q "2 replicas of each stage" "$work/$n-two.log" || fail "daemon $n does not say it runs 2 replicas"
  ! grep -q "replicas of each stage" "$work/$n-one.log" || fail "daemon $n runs replicas with one device"
done
python3 - "$work/status-two.json" <<'PY' || fail "status of the replicated daemon: $(cat "$work/status-two.json")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["job"]["replicas"] == 2, s["job"]
PY
python3 - "$work/loss-one.txt" "$work/loss-two.txt" <<'PY' || fail "the loss curves differ"
import sys
one = [float(l.split()[1]) for l in open(sys.argv[1])]
two = [float(l.split()[1]) for l in open(sys.argv[2])]
worst = max(abs(a - b) / abs(a) for a, b in zip(one, two))
print("losses 1 replica: %s" % " ".join("%.6f" % x for x in one))
print("max relative loss difference, 2 replicas vs 1: %.3g" % worst)
assert len(one) == len(two) and worst <= 1e-6, (one, two)
PY
python3 - "$work/val-one.txt" "$work/val-two.txt" <<'PY' || fail "the held-out losses differ"
import sys
one = [l.split() for l in open(sys.argv[1])]
two = [l.split() for l in open(sys.argv[2])]
print("held-out losses 1 replica: %s, 2 replicas: %s" % (one, two))
assert [s for s, _ in one] == [s for s, _ in two] == ["4", "8"], (one, two)
assert all(abs(float(a) - float(b)) <= 1e-3 * float(a) for (_, a), (_, b) in zip(one, two)), (one, two)
PY
# one set of weights per stage; the replicated run's are close to the other's
# (not bit-equal: the split changes the order of the gradient sums)
for s in 0 1; do
  [ -f "$work/weights-two/final-stage$s.weights" ] || fail "the replicated run wrote no weights for stage $s"
done
for s in 0 1; do
  "$bin/nebula-weights" compare --tol 1e-3 "$work/weights-one/final-stage$s.weights" \
    "$work/weights-two/final-stage$s.weights" > "$work/compare.log" 2>&1 ||
    { cat "$work/compare.log"; fail "stage $s: the replicated run's weights are far from the single-replica run's"; }
  tail -n 1 "$work/compare.log"
done
# several CUDA devices: two replicas, one per device (the NCCL engine; on
# the emulated device, whether or not this host has a GPU). A TSan build has
# no emulated device (its fibers switch stacks under TSan's feet): plain and
# ASan runs cover this part.
if [ ! -f "$build/lib/libnebula-cuda-emu.so" ]; then
  echo "no emulated CUDA device in this build: the two-GPU part is not run here"
  echo "ok pipeline-dp"
  exit 0
fi
module=$(realpath "$build/lib/libnebula-cuda-emu.so")
nb_stage_yaml "$work/g.yaml" a "127.0.0.1:$base" "127.0.0.1:$((base + 1))" 1 5 "devices: [cuda:0, cuda:1]"
NEBULA_CUDA_MODULE="$module" NB_CUDA_EMU_DEVICES=2 "$bin/nebulad" --config "$work/g.yaml" > "$work/g.log" 2>&1 &
pids=($!)
two_gpus() { grep -q "2 replicas of each stage, one per device" "$work/g.log"; }
nb_wait_for 60 two_gpus || fail "a stage with two CUDA devices does not run two replicas"
! grep -q "every job will be refused" "$work/g.log" || fail "a stage with two CUDA devices refuses jobs"
"$bin/nebulactl" --socket "$work/run/a.sock" stop >/dev/null || fail "stop the two-GPU stage"
wait "${pids[0]}" || fail "the two-GPU stage exited with status $?"
pids=()
echo "ok pipeline-dp"

#!/usr/bin/env bash
# Layer re-partitioning while the job runs: two stage daemons of the same
# speed start on a lopsided split (blocks 0-10 on a, 11 alone on b). After
# the profiling steps the planner finds a split predicted far faster than
# 11,1 (job.planner.repartition_min_gain 10%), the coordinator checkpoints at
# that step boundary into the stages' shared checkpoint_dir, restarts the
# attempt with the new layer ranges, and every stage reloads its tensors by
# their global names from that checkpoint. The job then runs to its end:
# the final weights equal, to the bit, nebula-train's on the same job, the
# move is logged, counted (nebula_job_repartitions_total) and shown
# (nebulactl status and plan name the new split). A second run with
# repartition_min_gain 0.9 (no split can be 90% faster) never moves.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
nb_work_init pipe-repart
nb_on_fail() { nb_tail_logs 30; }
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 30)
cp=$base ap=$((base + 1)) bp=$((base + 2))
steps=30
job_section() { # $1: repartition_min_gain
  cat <<YAML
job:
  model: {n_layer: 12, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: false}
  seed: 5
  data: data.tok
  batch: 8
  seq_len: 16
  steps: $steps
  micro_batches: 4
  schedule: gpipe
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 3, grad_clip: 1.0}
  codecs: {forward: fp32, backward: fp32}
  planner: {enabled: true, repartition: true, repartition_min_gain: $1, replan_steps: 3}
  log_every: 1
YAML
}
coord_yaml() { # $1: repartition_min_gain
  {
    echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$cp"
    echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
    echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 0.2"; echo "heartbeat_timeout_s: 5"
    echo "connect_timeout_s: 60"; echo "checkpoint_dir: run/coord-ckpt"
    job_section "$1"
    echo "  checkpoint: {every_steps: 1000, keep: 2}"
    echo "  clusters:"
    echo "    - {name: a, address: 127.0.0.1:$ap, layers: 0-10}"
    echo "    - {name: b, address: 127.0.0.1:$bp, layers: 11-11}"
  } > "$work/coord.yaml"
}
stage_yamls() { # $1: shared (one checkpoint_dir for both stages) or own
  local n
  for n in a b; do
    local dir=run/shared-ckpt port=$ap
    [ "$1" = shared ] || dir=run/$n-ckpt
    [ $n = a ] || port=$bp
    nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$port" "127.0.0.1:$cp" 0.2 5 "checkpoint_dir: $dir"
  done
}
# one checkpoint_dir for both stages: each reads the other's file after a move
stage_yamls shared
{ echo "name: ref"; echo "role: train"; job_section 0.1; echo "  output: ref.weights"; } > "$work/ref.yaml"
"$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref.log" 2>&1 || fail "nebula-train: $(tail -n 3 "$work/ref.log")"
mkdir -p "$work/run"

start() { "$bin/nebulad" --config "$work/$1.yaml" >> "$work/$1.log" 2>&1 & pids+=($!); }
done_yet() {
  ! grep -q "job failed" "$work/coord.log" || fail "job failed: $(grep -m 1 -o 'job failed.*' "$work/coord.log")"
  grep -q "job done" "$work/coord.log"
}
run_job() { # $1: repartition_min_gain
  rm -rf "$work/run"/*-ckpt
  mkdir -p "$work/run/a-ckpt" "$work/run/b-ckpt" "$work/run/shared-ckpt"
  for n in coord a b; do : > "$work/$n.log"; done
  coord_yaml "$1"
  start coord; start a; start b
  nb_wait_for 120 done_yet || fail "min_gain $1: the job did not finish within 120 s"
  "$bin/nebulactl" --socket "$work/run/coord.sock" status > "$work/status.txt" || fail "nebulactl status"
  "$bin/nebulactl" --socket "$work/run/coord.sock" plan > "$work/plan.txt" || fail "nebulactl plan"
  "$bin/nebulactl" --socket "$work/run/coord.sock" metrics > "$work/metrics.txt" || fail "nebulactl metrics"
  for n in coord a b; do "$bin/nebulactl" --socket "$work/run/$n.sock" stop >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do wait "$p" || true; done
  pids=()
  for n in coord a b; do cp "$work/$n.log" "$work/$n-$1.log"; done
  "$bin/nebula-weights" compare --tol 0 "$work/ref.weights" "$work"/run/*-ckpt/final-stage*.weights \
    > "$work/compare.log" 2>&1 || { cat "$work/compare.log"; fail "min_gain $1: final weights differ from nebula-train's"; }
}

# 1. the lopsided split moves, and the weights stay nebula-train's
run_job 0.1
expect_grep "re-partition after step [0-9]*: split [0-9]*,[0-9]* predicted" "$work/coord.log" "1: no re-partition decided"
expect_grep "re-partitioned in [0-9.]* s (attempt [0-9]*): 2 stages, split [0-9]*,[0-9]*; the job goes on" "$work/coord.log"
new=$(grep -m 1 -o "re-partitioned in .*split [0-9]*,[0-9]*" "$work/coord.log" | grep -o "[0-9]*,[0-9]*$")
[ -n "$new" ] && [ "$new" != "11,1" ] || fail "1: the split did not move from 11,1 (now '$new')"
moves=$(grep -c "re-partitioned in" "$work/coord.log" || true)
# the cooldown (replan_steps + 6 steps) bounds the moves; on a loaded
# machine the measured speeds are noisy, and a move may be undone
[ "$moves" -le 3 ] || fail "1: the split moved $moves times in $steps steps (flapping)"
for n in a b; do expect_grep "re-partitioned: stages .*restored from the checkpoint at step" "$work/$n.log"; done
grep -q "^nebula_job_repartitions_total $moves\$" "$work/metrics.txt" ||
  fail "1: nebula_job_repartitions_total is not $moves: $(grep repartitions "$work/metrics.txt")"
last=$(grep -o "re-partitioned in .*split [0-9]*,[0-9]*" "$work/coord.log" | tail -n 1 | grep -o "[0-9]*,[0-9]*$")
grep -q "split $last" "$work/status.txt" || fail "1: nebulactl status does not show split $last: $(cat "$work/status.txt")"
grep -q "^split     $last (re-partitions $moves" "$work/plan.txt" || fail "1: nebulactl plan: $(head -n 4 "$work/plan.txt")"
expect_no_grep "fault in attempt" "$work/coord.log" "1: the move was counted as a fault"
echo "ok 1: split 11,1 -> $new ($moves move(s)): $(grep -m 1 -o 'split [0-9]*,[0-9]* predicted.*faster' "$work/coord.log"); final weights equal nebula-train's"

# 2. a threshold no split can meet: no move, same weights
run_job 0.9
expect_no_grep "re-partition" "$work/coord.log" "2: a re-partition under a 90% threshold"
grep -q "^nebula_job_repartitions_total 0\$" "$work/metrics.txt" || fail "2: nebula_job_repartitions_total not 0"
grep -q "^split     11,1 (re-partitions 0" "$work/plan.txt" || fail "2: nebulactl plan: $(head -n 4 "$work/plan.txt")"
echo "ok 2: with repartition_min_gain 0.9 the split stays 11,1: $(grep -m 1 '^split' "$work/plan.txt")"

# 3. without a shared checkpoint_dir the stage that now needs the other's
# tensors cannot read them: it refuses the move (FAULT), keeps its parts,
# and the job goes back to 11,1 from the same checkpoint and trains on
stage_yamls own
run_job 0.1
expect_grep "re-partition after step [0-9]*: split" "$work/coord.log" "3: no re-partition decided"
grep -q "re-partition refused: .*tensor '.*' is in no file present" "$work/a.log" "$work/b.log" ||
  fail "3: no stage refused the move naming the missing tensor"
# the undo names the fault that caused it
expect_grep "re-partition undone: its attempt did not start: .*re-partition refused: .*is in no file present.*; the job goes back to 2 stages, split 11,1" "$work/coord.log"
expect_no_grep "re-partitioned in" "$work/coord.log" "3: a move took effect without a shared checkpoint_dir"
grep -q "^nebula_job_repartitions_total 0\$" "$work/metrics.txt" || fail "3: nebula_job_repartitions_total not 0"
grep -q "split 11,1" "$work/status.txt" || fail "3: nebulactl status: $(cat "$work/status.txt")"
echo "ok 3: separate checkpoint_dirs: $(grep -h -m 1 -o "tensor '[^']*' is in no file present" "$work/a.log" "$work/b.log" | head -n 1); back to 11,1; final weights equal"

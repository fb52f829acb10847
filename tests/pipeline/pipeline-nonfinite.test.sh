#!/usr/bin/env bash
# A NaN gradient in one stage must not poison the job. Real daemons (a
# coordinator and a 2-stage chain over TLS on loopback); the test-only hook
# NEBULA_TEST_NONFINITE_GRAD (daemon/train/grad_fault.h) writes a NaN into
# stage 1's gradient on chosen steps, in stage daemon b only.
#  - steps 6-7 (two skips, limit 3): the coordinator logs the skips with the
#    stage that produced them, counts them in nebula_job_steps_skipped_total,
#    every stage skips the update, the job ends, and the final weights are
#    finite and equal nebula-train's run with the same fault;
#  - steps 5 on (limit 3): the job stops after 3 consecutive skips, with the
#    reason, and so does nebula-train.
set -euo pipefail
build=${NB_BUILD:-build}
bin="$build/bin"
work=$(mktemp -d /tmp/nb-pipe-nonfinite.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$work"/*.log; do echo "--- $f"; tail -n 20 "$f"; done; exit 1; }

. tests/support/pipeline.sh
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(( 10000 + ($$ % 1500) * 10 ))  # below the ephemeral range (32768 on)

job_section() {
  cat <<YAML
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 128, vocab: 256, max_seq: 32, tie_embeddings: false}
  seed: 5
  data: data.tok
  batch: 4
  seq_len: 32
  steps: 12
  micro_batches: 2
  schedule: 1f1b
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 2, grad_clip: 1.0}
  codecs: {forward: fp32, backward: fp32}
  log_every: 4
  max_skipped_steps: 3
YAML
}

# start_job NAME FAULT: writes the configs and starts the three daemons, with
# FAULT in stage daemon b's environment.
start_job() {
  local name=$1 fault=$2
  local cp=$base ap=$((base + 1)) bp=$((base + 2))
  base=$((base + 3))
  rm -rf "$work/run"
  mkdir -p "$work/run"
  {
    echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$cp"
    echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
    echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 1"; echo "heartbeat_timeout_s: 10"
    echo "connect_timeout_s: 60"
    job_section
    echo "  clusters:"
    echo "    - {name: a, address: 127.0.0.1:$ap}"
    echo "    - {name: b, address: 127.0.0.1:$bp}"
  } > "$work/coord.yaml"
  nb_stage_yaml "$work/a.yaml" a "127.0.0.1:$ap" "127.0.0.1:$cp" 1 10 "checkpoint_dir: run/a-weights"
  nb_stage_yaml "$work/b.yaml" b "127.0.0.1:$bp" "127.0.0.1:$cp" 1 10 "checkpoint_dir: run/b-weights"
  pids=()
  "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/a.yaml" > "$work/a-$name.log" 2>&1 & pids+=($!)
  NEBULA_TEST_NONFINITE_GRAD=$fault "$bin/nebulad" --config "$work/b.yaml" > "$work/b-$name.log" 2>&1 & pids+=($!)
}

# wait_log FILE PATTERN: up to 120 s (ASan on a busy machine).
wait_log() {
  for _ in $(seq 1 1200); do
    grep -q "$2" "$1" && return 0
    sleep 0.1
  done
  return 1
}

{ echo "name: ref"; echo "role: train"; job_section; echo "  output: run-ref.weights"; } > "$work/ref.yaml"

# ---- two skipped steps: the job goes on and equals nebula-train ----
NEBULA_TEST_NONFINITE_GRAD=5-6 "$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref-skip.log" 2>&1 \
  || fail "nebula-train with two NaN steps"
grep -q "step 6: non-finite gradient norm (nan): update skipped (1 consecutive, limit job.max_skipped_steps = 3)" \
  "$work/ref-skip.log" || fail "nebula-train did not log the skip of step 6"
grep -q "2 steps skipped for a non-finite gradient norm" "$work/ref-skip.log" || fail "nebula-train did not count 2 skips"
start_job skip 5-6@1
wait_log "$work/coord-skip.log" "job done\|job failed" || fail "skip: no end of job within 120 s"
! grep -q "job failed" "$work/coord-skip.log" || fail "skip: the job failed"
grep -q "step 6: global gradient norm is nan, from stage 1 (on b): every stage skips this step's update (1 consecutive" \
  "$work/coord-skip.log" || fail "skip: the coordinator did not log step 6's skip with its stage"
grep -q "step 7: global gradient norm is nan, from stage 1 (on b).*(2 consecutive" "$work/coord-skip.log" \
  || fail "skip: the coordinator did not log step 7's skip"
[ "$(grep -c "global gradient norm is" "$work/coord-skip.log")" -eq 2 ] || fail "skip: more than two skips logged"
grep -q "step 6: stage 1's gradient is not finite" "$work/b-skip.log" || fail "skip: stage b did not name stage 1"
grep -q "step 6: update skipped" "$work/a-skip.log" || fail "skip: stage a did not skip step 6"
"$bin/nebulactl" --socket "$work/run/coord.sock" metrics > "$work/metrics.txt" || fail "skip: nebulactl metrics"
grep -q '^nebula_job_steps_skipped_total 2$' "$work/metrics.txt" \
  || fail "skip: nebula_job_steps_skipped_total is not 2: $(grep skipped "$work/metrics.txt")"
grep -q '^nebula_job_steps_total 12$' "$work/metrics.txt" || fail "skip: the skipped steps are not counted as steps"
for s in coord a b; do "$bin/nebulactl" --socket "$work/run/$s.sock" stop >/dev/null || fail "skip: stop $s"; done
for p in "${pids[@]}"; do wait "$p" || fail "skip: a daemon exited with status $?"; done
pids=()
for f in "$work"/run/*-weights/final-stage*.weights; do
  "$bin/nebula-weights" show "$f" > "$work/show.txt" || fail "skip: nebula-weights show $f"
  ! grep -Eqi "rms -?(nan|inf)" "$work/show.txt" || fail "skip: $f holds non-finite weights: $(cat "$work/show.txt")"
done
"$bin/nebula-weights" compare --tol 1e-5 "$work/run-ref.weights" "$work"/run/*-weights/final-stage*.weights \
  > "$work/compare.log" 2>&1 || { cat "$work/compare.log"; fail "skip: weights differ from nebula-train's"; }
echo "ok two NaN steps skipped everywhere: $(tail -n 1 "$work/compare.log")"

# ---- NaN from step 5 on: the third skip in a row stops the job ----
rc=0
NEBULA_TEST_NONFINITE_GRAD=4-100 "$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref-stop.log" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || fail "nebula-train with endless NaN steps exited $rc, not 1"
grep -q "step 7: 3 consecutive steps skipped for a non-finite gradient norm (job.max_skipped_steps = 3): stopping" \
  "$work/ref-stop.log" || fail "nebula-train did not stop after 3 skips"
start_job stop 4-100@1
wait_log "$work/coord-stop.log" "job done\|job failed" || fail "stop: no end of job within 120 s"
grep -q "job failed: 3 consecutive steps skipped for a non-finite gradient norm (job.max_skipped_steps = 3); step 7's came from stage 1 (on b)" \
  "$work/coord-stop.log" || fail "stop: the coordinator did not stop the job with the reason"
for p in "${pids[@]}"; do
  rc=0; wait "$p" || rc=$?
  [ "$rc" -eq 1 ] || fail "stop: a daemon exited with status $rc, not 1"
done
pids=()
echo "ok 3 consecutive NaN steps stop the job"

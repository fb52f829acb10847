#!/usr/bin/env bash
# A link that goes down for 6 s and comes back costs one step retry and
# nothing else: a coordinator and stage a in namespace "nbrlN-a", stage b in
# "nbrlN-b" (N from the shell's PID), joined by a veth pair (scripts/wan-emu.sh). Mid-job the link is
# set down for 6 s (twice the 3 s heartbeat timeout, so every daemon
# sees its connections across it die), then up again. Pass: the job
# recovers once (nebula_job_restarts_total 1), from the daemons' memory
# (no checkpoint is read, none was taken), with at most one step run again,
# and its final weights equal, to the bit, those of nebula-train on the same
# job without a fault. Skips (77) without root or network namespaces.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
ns=nbrl$(( $$ % 10000 ))  # unique per run: concurrent runs must not share namespaces
[ "$(id -u)" = 0 ] || nb_skip "needs root for network namespaces"
command -v ip >/dev/null && command -v tc >/dev/null || nb_skip "no ip/tc"
nb_work_init recovery-link
nb_on_fail() { nb_tail_logs 25; }
trap 'nb_work_cleanup; scripts/wan-emu.sh down "$ns" >/dev/null 2>&1 || true' EXIT
rc=0; scripts/wan-emu.sh up "$ns" 1000 >/dev/null 2>&1 || rc=$?
[ $rc -eq 0 ] || { [ $rc -eq 77 ] && nb_skip "network namespaces or tc tbf unavailable"; fail "wan-emu up: $rc"; }
nb_pipe_prepare "$work" "$bin" || exit 1
port=$(( 44000 + ($$ % 500) * 3 ))
cp=$port ap=$((port + 1)) bp=$((port + 2))
mkdir -p "$work/run"
job_section() {
  cat <<YAML
job:
  model: {n_layer: 4, d_model: 64, n_head: 4, d_ff: 256, vocab: 256, max_seq: 32, tie_embeddings: false}
  seed: 9
  data: data.tok
  batch: 8
  seq_len: 32
  steps: 80
  micro_batches: 4
  schedule: 1f1b
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 3, grad_clip: 1.0}
  codecs: {forward: fp32, backward: fp32}
  planner: {enabled: false}
  log_every: 1
YAML
}
{
  echo "name: coord"; echo "role: coordinator"; echo "listen: 10.77.0.1:$cp"
  echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
  echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 0.5"; echo "heartbeat_timeout_s: 3"
  echo "connect_timeout_s: 30"
  job_section
  echo "  recovery_timeout_s: 120"
  echo "  clusters:"
  echo "    - {name: a, address: 10.77.0.1:$ap}"
  echo "    - {name: b, address: 10.77.0.2:$bp}"
} > "$work/coord.yaml"
nb_stage_yaml "$work/a.yaml" a "10.77.0.1:$ap" "10.77.0.1:$cp" 0.5 3 "checkpoint_dir: run/a-out"
nb_stage_yaml "$work/b.yaml" b "10.77.0.2:$bp" "10.77.0.1:$cp" 0.5 3 "checkpoint_dir: run/b-out"
{ echo "name: ref"; echo "role: train"; job_section; echo "  output: run/ref.weights"; } > "$work/ref.yaml"
"$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref.log" 2>&1 || fail "nebula-train"

ip netns exec "$ns-a" "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord.log" 2>&1 & pids+=($!)
ip netns exec "$ns-a" "$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & pids+=($!)
ip netns exec "$ns-b" "$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & pids+=($!)
failed() { ! grep -q "job failed" "$work/coord.log" || fail "the job failed: $(grep -m 1 -o 'job failed.*' "$work/coord.log")"; }
at_step() { grep -o " step [0-9]*/80" "$work/coord.log" | tail -n 1 | grep -o "[0-9]*" | head -n 1; }
reached() { failed; [ "$(at_step 2>/dev/null || echo 0)" -ge "$1" ] 2>/dev/null; }
nb_wait_for 120 reached 20 || fail "the job did not reach step 20 within 120 s"
down_at=$(at_step)
ip -n "$ns-a" link set dev "v$ns-a" down
sleep 6
ip -n "$ns-a" link set dev "v$ns-a" up
echo "# link down at step $down_at for 6 s, up again"
done_yet() { failed; grep -q "job done" "$work/coord.log"; }
nb_wait_for 300 done_yet || fail "no 'job done' within 300 s of the link coming back"
"$bin/nebulactl" --socket "$work/run/coord.sock" metrics > "$work/metrics.txt" || fail "nebulactl metrics"
grep -q "^nebula_job_restarts_total 1$" "$work/metrics.txt" ||
  fail "expected one recovery: $(grep nebula_job_restarts_total "$work/metrics.txt")"
redone=$(sed -n 's/^nebula_job_steps_redone_total \([0-9]*\)$/\1/p' "$work/metrics.txt")
[ -n "$redone" ] && [ "$redone" -le 1 ] || fail "expected at most one step run again, got '$redone'"
expect_grep "resuming from the daemons' memory" "$work/coord.log" "the job did not resume from memory"
expect_no_grep "checkpoint" "$work/coord.log" "a checkpoint was involved"
grep -h "fault in attempt\|recovered in\|resuming from" "$work/coord.log" | sed 's/^/#   /'
for s in coord a b; do "$bin/nebulactl" --socket "$work/run/$s.sock" stop >/dev/null 2>&1 || true; done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()
"$bin/nebula-weights" compare --tol 0 "$work/run/ref.weights" "$work"/run/*-out/final-stage*.weights \
  > "$work/compare.log" 2>&1 || { cat "$work/compare.log"; fail "final weights differ from the uninterrupted run"; }
tail -n 1 "$work/compare.log"
echo "ok: a 6 s link outage cost $redone step(s) run again and one recovery; final weights equal"

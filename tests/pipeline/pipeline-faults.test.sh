#!/usr/bin/env bash
# Bad situations of the pipeline job, with real daemons on loopback over TLS:
#  1. a stage daemon that never connects: the coordinator names it (and
#     only it) after connect_timeout_s and gives up (exit 1);
#  2. SIGTERM to stage b during a long job, and b does not come back: the
#     coordinator notices within the heartbeat timeout, waits for it to come
#     back for job.recovery_timeout_s (5 s here), then fails the job naming
#     the fault and whom it waited for; every daemon stops in order (exit 1),
#     and no weights file, partial or not, is left;
#  3. a memory limit the plan cannot meet: refused at start with the numbers;
#  4. a codec spec that does not parse: refused at start, naming the spec;
#  5. a stage whose device cannot host its part (cuda:0 where there is no
#     GPU, or a CUDA backend without the transformer ops): the stage refuses
#     the job with the reason and exits 1, and the coordinator ends the job,
#     naming the stage;
#  6. a job with a held-out file (job.eval.data) whose stage 0 daemon has no
#     eval_data: refused with that reason.
# Every wait is for an event, with a deadline generous enough for a sanitizer
# build on a busy machine; the stages' connect timeout is 120 s except in 1.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
nb_work_init pipe-faults
nb_on_fail() { nb_tail_logs 15; }
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 40)
cp=$base ap=$((base + 1)) bp=$((base + 2))

write_configs() { # $1 steps, $2 extra planner/codec lines, $3 forward codec, $4 connect timeout
  cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 0.2
heartbeat_timeout_s: 5
connect_timeout_s: ${4:-120}
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: false}
  data: data.tok
  batch: 4
  seq_len: 16
  steps: $1
  micro_batches: 2
  codecs: {forward: ${3:-fp32}, backward: fp32}
$2
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
    - {name: b, address: 127.0.0.1:$bp}
YAML
  for n in a b; do
    p=$ap; [ $n = b ] && p=$bp
    nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 0.2 5 "checkpoint_dir: run/$n-weights"
  done
  rm -rf "$work/run"; mkdir -p "$work/run"
}

wait_exit() { # $1 pid, $2 seconds; sets $st to the exit status or "timeout"
  local i
  st=timeout
  for i in $(seq 1 $(( $2 * 10 ))); do
    if ! kill -0 "$1" 2>/dev/null; then
      if wait "$1"; then st=0; else st=$?; fi
      return
    fi
    sleep 0.1
  done
}

# 1. stage b never starts. (Stage a, started with the coordinator, connects
# well within 5 s on a quiet machine; on a very busy one it may not, and then
# the coordinator rightly names it too: that case is told apart from a
# coordinator that names a stage that did connect.)
write_configs 5 "" fp32 5
"$bin/nebulad" --config "$work/coord.yaml" > "$work/c1.log" 2>&1 & c=$!; pids=($c)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a1.log" 2>&1 & a=$!; pids+=($a)
wait_exit $c 120
[ "$st" = 1 ] || fail "1: coordinator exit status $st, expected 1"
expect_grep "job failed: stage daemons did not connect within 5 s: .*b (127.0.0.1:$bp)$" "$work/c1.log" \
  "1: coordinator did not name stage b"
connected=$(grep -n -m 1 " a: stage daemon connected from" "$work/c1.log" | cut -d: -f1 || true)
failed=$(grep -n -m 1 "job failed: stage daemons did not connect" "$work/c1.log" | cut -d: -f1)
if [ -n "$connected" ] && [ "$connected" -lt "$failed" ]; then
  expect_no_grep "did not connect within 5 s: a (127.0.0.1:$ap)" "$work/c1.log" "1: the coordinator named stage a, which did connect"
fi
kill $a; wait $a 2>/dev/null || true; pids=()
echo "ok 1: missing stage named, coordinator gave up"

# 2. SIGTERM to stage b during a long job; b stays down
write_configs 100000 "  recovery_timeout_s: 5"
"$bin/nebulad" --config "$work/coord.yaml" > "$work/c2.log" 2>&1 & c=$!; pids=($c)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a2.log" 2>&1 & a=$!; pids+=($a)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b2.log" 2>&1 & b=$!; pids+=($b)
nb_wait_for 120 grep -q "step 1/" "$work/c2.log" || fail "2: the job did not start within 120 s"
kill -TERM $b
wait_exit $b 60; sb=$st; wait_exit $c 60; sc=$st; wait_exit $a 60; sa=$st
[ "$sb" != timeout ] || fail "2: stage b did not stop on SIGTERM"
[ "$sc" = 1 ] || fail "2: coordinator exit status $sc, expected 1"
[ "$sa" = 1 ] || fail "2: stage a exit status $sa, expected 1"
# the coordinator names the fault (it saw b leave, or a reported losing its
# neighbour b) and whom it waited for
expect_grep "job failed: the job did not recover within 5 s (job.recovery_timeout_s) of the fault (\(lost stage daemon b\|stage daemon a: .*lost pipeline neighbour b\).*); waiting for b (not connected)" \
  "$work/c2.log" "2: coordinator did not name the lost stage"
if ls "$work"/run/*-weights/* >/dev/null 2>&1; then fail "2: weights files left behind: $(ls "$work"/run/*-weights)"; fi
pids=()
echo "ok 2: a stage that does not come back within job.recovery_timeout_s ends the job everywhere, nothing left behind"

# 3. a memory limit the plan cannot meet
write_configs 5 "  planner: {enabled: false, stage_memory: 100KiB}"
set +e; "$bin/nebulad" --config "$work/coord.yaml" > "$work/c3.log" 2>&1; st=$?; set -e
[ $st -ne 0 ] || fail "3: coordinator started despite the memory limit"
grep -q "needs .* MiB at m=2 .* more than job.planner.stage_memory" "$work/c3.log" || fail "3: no numbers in the refusal"
echo "ok 3: plan refused for memory, with the numbers"

# 4. a codec spec that does not parse
write_configs 5 "" "int9"
set +e; "$bin/nebulad" --config "$work/coord.yaml" > "$work/c4.log" 2>&1; st=$?; set -e
[ $st -ne 0 ] || fail "4: coordinator started with codec int9"
grep -q "job.codecs: .*int9" "$work/c4.log" || fail "4: the refusal does not name the spec"
echo "ok 4: bad codec spec refused"

# 5. a stage on a device that cannot host its part
write_configs 5 ""
echo "devices: [cuda:0]" >> "$work/b.yaml"
"$bin/nebulad" --config "$work/coord.yaml" > "$work/c5.log" 2>&1 & c=$!; pids=($c)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a5.log" 2>&1 & a=$!; pids+=($a)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b5.log" 2>&1 & b=$!; pids+=($b)
wait_exit $c 120
[ "$st" = 1 ] || fail "5: coordinator exit status $st, expected 1"
# the two reasons: no such device, or a CUDA backend without an op the model needs
expect_grep "job failed: stage daemon b: b: \(device cuda:0: .\|backend cuda does not support [a-z0-9_]* \)" "$work/c5.log" \
  "5: the refusal does not name stage b and its device or the missing op"
wait_exit $b 120
[ "$st" = 1 ] || fail "5: the stage that refused the job: exit status $st, expected 1"
kill $a 2>/dev/null || true; wait $a 2>/dev/null || true; pids=()
echo "ok 5: a stage that cannot host its part refuses the job: $(grep -o "job failed: .*" "$work/c5.log" | head -n 1)"

# 6. a held-out file (job.eval.data) the stage hosting stage 0 has not got:
# it refuses the job naming its missing eval_data, and the job fails
write_configs 5 "  eval: {data: held.tok}"
"$bin/nebulad" --config "$work/coord.yaml" > "$work/c6.log" 2>&1 & c=$!; pids=($c)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a6.log" 2>&1 & a=$!; pids+=($a)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b6.log" 2>&1 & b=$!; pids+=($b)
wait_exit $c 120
[ "$st" = 1 ] || fail "6: coordinator exit status $st, expected 1"
expect_grep "job failed: stage daemon a: a: .*job.eval.data.* no eval_data file" "$work/c6.log" \
  "6: the refusal does not name stage a and its missing eval_data"
for p in $a $b; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=()
echo "ok 6: a stage 0 without the held-out file refuses the job: $(grep -o "job failed: .*" "$work/c6.log" | head -n 1)"

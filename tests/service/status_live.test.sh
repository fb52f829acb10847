#!/usr/bin/env bash
# The status socket tells the truth while a job runs: a coordinator and two
# stage daemons (loopback, TLS) train a tiny model; nebulactl, as an operator
# would, sees the state move to running, peers up, the step and the loss
# advance, metrics and a trace with events; then the job is stopped through
# the coordinator's socket and every daemon exits.
set -u
B=${NB_BUILD:-build}/bin
D=$(realpath "$B/nebulad"); C=$(realpath "$B/nebulactl")
[ -x "$B/nebula-tokenize" ] || { echo "nebula-tokenize not built"; exit 77; }
text=/usr/share/common-licenses/GPL-3
[ -r "$text" ] || { echo "$text missing; no training text"; exit 77; }
. tests/support/assert.sh
nb_work_init status-live
nb_on_fail() { nb_tail_logs 15; }

bash scripts/gen-certs.sh "$work/certs" coord a b >/dev/null || fail "gen-certs"
"$B/nebula-tokenize" "$text" "$work/data.tok" >/dev/null || fail "tokenize"
. tests/support/pipeline.sh
base=$(nb_port_base 40)
cp=$base ap=$((base + 1)) bp=$((base + 2))
cat > "$work/coord.yaml" <<Y
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 0.2
heartbeat_timeout_s: 2
connect_timeout_s: 120
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: false}
  data: data.tok
  batch: 4
  seq_len: 16
  steps: 100000
  micro_batches: 2
  schedule: gpipe
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
    - {name: b, address: 127.0.0.1:$bp}
Y
for n in a b; do
  p=$ap; [ $n = b ] && p=$bp
  cat > "$work/$n.yaml" <<Y
name: $n
role: stage
listen: 127.0.0.1:$p
tls: {cert: certs/$n.pem, key: certs/$n.key, ca: certs/ca.pem}
coordinator: {address: 127.0.0.1:$cp, name: coord}
data: data.tok
status_socket: run/$n.sock
heartbeat_interval_s: 0.2
heartbeat_timeout_s: 2
Y
done
for n in coord a b; do "$D" --config "$work/$n.yaml" > "$work/$n.log" 2>&1 & pids+=($!); done
CS="$work/run/coord.sock"

# the coordinator's step, or 0 while it does not answer
coord_step() {
  local js
  js=$("$C" --socket "$CS" --json status 2>/dev/null) || { echo 0; return; }
  js=$(grep -o '"step":[0-9]*' <<<"$js" | head -1 | cut -d: -f2)
  echo "${js:-0}"
}
past_step() { [ "$(coord_step)" -gt "$1" ]; }
# Wait until the coordinator reports a few steps.
nb_wait_for 120 past_step 2 || fail "coordinator never reported step 3 within 120 s (last: $(coord_step))"
out=$("$C" --socket "$CS" status) || fail "status"
echo "$out"
grep -q '^state     running ' <<<"$out" || fail "coordinator not running"
grep -Eq '^a +stage +127\.0\.0\.1:[0-9]+ +up ' <<<"$out" || fail "peer a not up"
grep -Eq '^b +stage +127\.0\.0\.1:[0-9]+ +up ' <<<"$out" || fail "peer b not up"
grep -Eq '^job       step [0-9]+/100000  loss [0-9]+\.[0-9]{4} ' <<<"$out" || fail "no loss on the job line"
s2=$(coord_step)
nb_wait_for 60 past_step "$s2" || fail "step does not advance past $s2 within 60 s"
sa=$("$C" --socket "$work/run/a.sock" status) || fail "stage a status"
grep -q '^state     running ' <<<"$sa" || fail "stage a not running: $sa"
grep -Eq '^coord +coordinator +.* up ' <<<"$sa" || fail "stage a does not see the coordinator up: $sa"
"$C" --socket "$CS" metrics | grep -Eq '^nebula_job_steps_total [1-9]' || fail "steps metric"
# The first stage's trace: events on its stage track and on its link track.
"$C" --socket "$work/run/a.sock" trace -o "$work/trace.json" | grep -Eq '^wrote [1-9][0-9]* events' || fail "empty trace"
grep -q '"cat":"link","ph":"X"' "$work/trace.json" || fail "no link events in the trace"
grep -q '"cat":"stage","ph":"X"' "$work/trace.json" || fail "no stage events in the trace"
"$C" --socket "$CS" trace -o "$work/coord-trace.json" >/dev/null || fail "coordinator trace"

# Stop the job through the coordinator's socket: every daemon exits.
"$C" --socket "$CS" stop >/dev/null || fail "stop"
for i in 0 1 2; do
  nb_wait_for 60 eval "! kill -0 ${pids[$i]} 2>/dev/null" || fail "daemon $i still running 60 s after the stop"
done
wait "${pids[0]}"; st=$?
[ $st -eq 0 ] || fail "coordinator exit $st after stop"
[ ! -e "$CS" ] || fail "coordinator socket left"
echo "status live ok"

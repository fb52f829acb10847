#!/usr/bin/env bash
# The coordinator plans on its own: two stage daemons on loopback over TLS, a
# job with micro_batches and schedule auto and two allowed codecs. Checks, as
# an operator would through the log and the status socket: the stages probe
# their link, the coordinator profiles two micro-batch sizes, chooses a plan
# and logs it with its prediction, publishes the predicted bubble next to the
# measured one, answers `nebulactl plan` (ranked candidates, a what-if
# bandwidth), refuses malformed plan requests with a message, accepts a pinned
# plan and counts re-plans in its metrics. Both layouts: a chain, and the
# U-shape (the head back on the first daemon, three stages on two daemons).
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
nb_work_init coord-plan
nb_on_fail() { nb_tail_logs 30; }
nb_pipe_prepare "$work" "$bin" || exit 1
run_topo() { # $1 chain | ushape, $2 port base
local topo=$1 cp=$2 ap=$(($2 + 1)) bp=$(($2 + 2))
rm -rf "$work/run"; mkdir -p "$work/run"
cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 1
heartbeat_timeout_s: 10
connect_timeout_s: 30
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 128, vocab: 256, max_seq: 32, tie_embeddings: false}
  seed: 5
  data: data.tok
  batch: 8
  seq_len: 32
  steps: 1000000
  micro_batches: auto
  schedule: auto
  optimizer: {lr: 1e-3}
  codecs: {forward: fp32, backward: fp32}
  topology: $topo
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
    - {name: b, address: 127.0.0.1:$bp}
  planner:
    enabled: true
    codecs: [fp32, fp16]
    replan_steps: 3
  log_every: 500
YAML
for n in a b; do
  p=$ap; [ $n = b ] && p=$bp
  nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 1 10
done
"$bin/nebulad" --config "$work/coord.yaml" > "$work/coord.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & pids+=($!)
ctl() { "$bin/nebulactl" --socket "$work/run/coord.sock" "$@"; }
planned() {
  ! grep -q "job failed" "$work/coord.log" || fail "job failed"
  grep -q "planner: chose" "$work/coord.log"
}
nb_wait_for 120 planned || fail "no plan chosen within 120 s"
grep -q "link to b: rtt .* Mbit/s out" "$work/coord.log" || fail "no link probe from a"
grep -q "link to a: rtt .* Mbit/s out" "$work/coord.log" || fail "no link probe from b"
grep -q "planner: step 1: profiling at m=" "$work/coord.log" || fail "no profiling step logged"
grep -q "planner: step 3: profiling at m=" "$work/coord.log" || fail "no second profiling size"
grep "planner: chose" "$work/coord.log" | grep -q "T=[0-9.]*s bubble=" || fail "the choice has no prediction"
sleep 1
ctl status --json > "$work/status.json" || fail "status"
python3 - "$work/status.json" <<'PY' || fail "status job section: $(cat "$work/status.json")"
import json, sys
j = json.load(open(sys.argv[1]))["job"]
assert 0 <= j["bubble_predicted"] <= 1, j
assert j["bubble_measured"] >= 0, j
PY
ctl plan --json > "$work/plan.json" || fail "plan --json"
python3 - "$work/plan.json" <<'PY' || fail "plan reply: $(head -c 2000 "$work/plan.json")"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["state"] == "planned", j["state"]
c = j["candidates"]
assert len(c) >= 4 and c[0]["rank"] == 1, c[:2]
assert all(x["step_s"] > 0 for x in c)
# feasible plans first, ranked 1..k by predicted step time (the first is the
# fastest or a near-tie of it), then any that do not fit, rank 0
f = [x for x in c if x["feasible"]]
assert f and c[:len(f)] == f and all(x["rank"] == 0 for x in c[len(f):]), [x["rank"] for x in c]
assert [x["rank"] for x in f] == list(range(1, len(f) + 1)), [x["rank"] for x in f]
t = [x["step_s"] for x in f]
assert t[1:] == sorted(t[1:]) and t[0] <= min(t) * 1.005, t
ms = {x["m"] for x in c}
assert all(8 % m == 0 for m in ms), ms
assert {x["forward"] for x in c} <= {"fp32", "fp16"}
# the quality budget (default) and each candidate's measured codec error
assert j["max_codec_error"] == 0.25, j.get("max_codec_error")
assert all(x["forward_error"] < 1e-3 and x["backward_error"] < 1e-3 for x in c), c[0]
# each codec's error says where it comes from; a live one (the stages sample
# the tensors they send every 10th step) is fp16's, small and positive
for x in j["measurements"]["codecs"]:
    assert x["error_source"] in ("live", "calibration"), x
    assert x["error_source"] == "calibration" or (x["spec"] == "fp16" and 0 < x["error"] < 1e-3), x
m = j["measurements"]
assert m["compute_measured"] and m["links"][0]["forward"]["measured"], m["links"]
assert len(m["stages"][0]["sizes"]) >= 2, m["stages"][0]
# one device per stage daemon: one replica each (JobStatus JOINED.replicas)
assert all(st["replicas"] == 1 for st in m["stages"]), m["stages"]
assert any(h["steps"] >= 1 and h["measured_step_s"] > 0 and h["predicted_step_s"] > 0 for h in j["history"])
PY
ctl plan > "$work/plan.txt" || fail "plan"
grep -q "<- chosen" "$work/plan.txt" || fail "plan table has no chosen row: $(cat "$work/plan.txt")"
grep -q "fwd err" "$work/plan.txt" || fail "plan table has no codec error: $(cat "$work/plan.txt")"
grep -q "^budget .* 0.25" "$work/plan.txt" || fail "plan shows no error budget: $(cat "$work/plan.txt")"
ctl plan --bandwidth-mbit 1 > "$work/plan-1mbit.txt" || fail "plan --bandwidth-mbit"
grep -q "<- chosen" "$work/plan-1mbit.txt" || fail "what-if table"
# malformed requests get a clear error, the daemon keeps running
if ctl plan --bandwidth-mbit -5 > "$work/bad.txt" 2>&1; then fail "negative bandwidth accepted"; fi
grep -qi "bandwidth" "$work/bad.txt" || fail "no reason for the refused bandwidth: $(cat "$work/bad.txt")"
if ctl plan-pin --m 3 > "$work/bad2.txt" 2>&1; then fail "m=3 pinned on a batch of 8"; fi
grep -q "does not divide" "$work/bad2.txt" || fail "no reason for m=3: $(cat "$work/bad2.txt")"
printf '{"cmd":"plan","rows":"x"}\n{"cmd":"plan-pin","m":"two"}\n{"cmd":"status"}\n' \
  | python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read())
buf = b""
while buf.count(b"\n") < 3:
    d = s.recv(65536)
    if not d: break
    buf += d
lines = buf.decode().splitlines()
assert "\"ok\": false" in lines[0] or "\"ok\":false" in lines[0], lines[0]
assert "\"ok\": false" in lines[1] or "\"ok\":false" in lines[1], lines[1]
assert "\"ok\": true" in lines[2] or "\"ok\":true" in lines[2], lines[2][:200]
' "$work/run/coord.sock" || fail "malformed plan requests"
ctl plan-pin --m 2 --schedule gpipe --forward fp16 --backward fp32 > /dev/null || fail "plan-pin"
nb_wait_for 120 grep -q "pinned plan m=2 gpipe fwd=fp16 bwd=fp32" "$work/coord.log" || fail "pinned plan not run within 120 s"
# the pinned plan's history row carries the prediction it started with,
# made before any of its steps ran (out of sample), once a step is measured
pin_scored() {
  ctl plan --json > "$work/plan2.json" || return 1
  python3 - "$work/plan2.json" 2>/dev/null <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
r = [h for h in j["history"] if h["m"] == 2 and h["schedule"] == "gpipe" and h["forward"] == "fp16"]
assert r and r[0]["steps"] >= 1, r
assert r[0]["predicted_before_run_s"] > 0 and r[0]["predicted_at_step"] >= 4, r
assert r[0]["predicted_before_run_with_overhead_s"] >= r[0]["predicted_before_run_s"], r
PY
}
nb_wait_for 120 pin_scored || fail "no out-of-sample prediction for the pinned plan: $(head -c 3000 "$work/plan2.json")"
ctl plan > "$work/plan-hist.txt" || fail "plan"
grep -q "before run" "$work/plan-hist.txt" || fail "plan text has no out-of-sample column: $(cat "$work/plan-hist.txt")"
ctl plan-pin --clear > /dev/null || fail "plan-pin --clear"
ctl metrics > "$work/metrics.txt" || fail "metrics"
grep -q '^nebula_replans_total ' "$work/metrics.txt" || fail "no nebula_replans_total"
grep -q '^nebula_job_predicted_step_seconds ' "$work/metrics.txt" || fail "no predicted step gauge"
# the job would run for a million steps: the operator stops it
ctl stop > /dev/null || fail "stop"
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()
if grep -q "job failed" "$work/coord.log" && ! grep -q "stopping" "$work/coord.log"; then fail "job failed"; fi
echo "ok coord-plan $topo"
}

base=$(nb_port_base 40)
run_topo chain $base
run_topo ushape $((base + 3))

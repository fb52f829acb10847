#!/usr/bin/env bash
# Re-planning end to end: a coordinator and two stage daemons in two network
# namespaces joined by a tbf-shaped veth link (scripts/wan-emu.sh, namespace
# "plrN", N from the shell's PID). The job starts at 200 Mbit/s and the planner chooses its plan;
# then the link drops to 5 Mbit/s mid-job (tc qdisc replace). The stages'
# passive link estimates (in every report) show the drop, the coordinator
# re-plans at a step boundary, logs old and new plan with predictions, and
# nebula_replans_total counts it. The model's boundary tensor is 64 KiB per
# sequence, so every tensor frame is large enough for the passive estimate.
# Skips (77) without root, netns or tc tbf.
set -u
build=${NB_BUILD:-build}
bin="$build/bin"
ns=plr$(( $$ % 100000 ))  # unique per run: concurrent runs must not share namespaces
[ "$(id -u)" = 0 ] || { echo "replan-wan: needs root for network namespaces"; exit 77; }
command -v tc >/dev/null && command -v ip >/dev/null || { echo "replan-wan: no ip/tc"; exit 77; }
. tests/support/wan.sh
nb_wan_work_init nb-replan-wan "$ns"
fail() { echo "FAIL: $*"; for f in "$work"/*.log; do echo "--- $f"; grep -v " step [0-9]*/" "$f" | tail -n 25; done; exit 1; }
shape() { # $1 rate in Mbit/s: 8 KiB segments, a bucket of 32 KiB
  for s in a b; do
    ip -n "$ns-$s" link set dev "v$ns-$s" gso_max_size 8192 2>/dev/null
    ip netns exec "$ns-$s" tc qdisc replace dev "v$ns-$s" root tbf rate "${1}mbit" burst 32kb latency 50ms || return 1
  done
}
scripts/wan-emu.sh up "$ns" 200 || exit $?
shape 200 || { echo "replan-wan: tc tbf not available"; exit 77; }
. tests/support/pipeline.sh
nb_pipe_prepare "$work" "$bin" || exit 1
port=$(( 43000 + ($$ % 500) * 3 ))
cp=$port ap=$((port + 1)) bp=$((port + 2))
mkdir -p "$work/run"
cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 10.77.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 2
heartbeat_timeout_s: 30
connect_timeout_s: 60
job:
  model: {n_layer: 2, d_model: 256, n_head: 4, vocab: 256, max_seq: 64, tie_embeddings: false}
  seed: 3
  data: data.tok
  batch: 8
  seq_len: 64
  steps: 100000
  micro_batches: auto
  schedule: auto
  optimizer: {lr: 1e-3}
  codecs: {forward: fp32, backward: fp32}
  clusters:
    - {name: a, address: 10.77.0.1:$ap}
    - {name: b, address: 10.77.0.2:$bp}
  planner: {enabled: true, replan_steps: 3, replan_threshold: 0.3}
  log_every: 1
YAML
for n in a b; do
  p=$ap host=10.77.0.1
  [ $n = b ] && p=$bp host=10.77.0.2
  nb_stage_yaml "$work/$n.yaml" $n "$host:$p" "10.77.0.1:$cp" 2 30
done
ip netns exec "$ns-a" "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord.log" 2>&1 & pids+=($!)
OPENBLAS_NUM_THREADS=1 ip netns exec "$ns-a" "$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & pids+=($!)
OPENBLAS_NUM_THREADS=1 ip netns exec "$ns-b" "$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & pids+=($!)
steps() { grep -c " step [0-9]*/" "$work/coord.log"; }
for _ in $(seq 1 600); do
  grep -q "planner: chose" "$work/coord.log" && break
  grep -q "job failed" "$work/coord.log" && fail "job failed"
  sleep 0.1
done
grep -q "planner: chose" "$work/coord.log" || fail "no plan within 60 s"
grep "link to b" "$work/coord.log" | grep -q "rtt" || fail "no probe of the link"
# let the plan settle (basis), then drop the link
start=$(steps)
for _ in $(seq 1 600); do [ "$(steps)" -ge $((start + 8)) ] && break; sleep 0.1; done
# Compute may drift on a shared machine and re-plan. The link's passive
# estimate may too, where a starved receiver (a busy 2-core machine, a
# sanitizer build) reads frames slower than the link carries them: such a
# re-plan before the drop is reported, and the re-plan this test checks is
# the first link re-plan after the drop.
linkres() { grep "planner: re-plan [0-9]* at step .*(link 0-1 .* bandwidth" "$work/coord.log"; }
before=$(linkres | wc -l)
[ "$before" -eq 0 ] || echo "note: $before link re-plan(s) before the drop: $(linkres | sed 's/^.*planner: //')"
shape 5 || fail "cannot reshape the link"
dropped=$(steps)
linkre() { linkres | sed -n "$((before + 1))p"; }
for _ in $(seq 1 900); do
  [ -n "$(linkre)" ] && break
  grep -q "job failed" "$work/coord.log" && fail "job failed"
  sleep 0.1
done
line=$(linkre)
[ -n "$line" ] || fail "no re-plan for the link within 90 s of the drop ($(( $(steps) - dropped )) steps)"
echo "$line" | sed 's/^.*planner: //'
echo "$line" | grep -q "link 0-1 .* bandwidth" || fail "the re-plan does not name the link: $line"
echo "$line" | grep -q "old m=.* T=.*s .*now predicted .*s; new m=.* T=.*s" || fail "old and new plan not logged: $line"
"$bin/nebulactl" --socket "$work/run/coord.sock" metrics > "$work/metrics.txt" || fail "metrics"
grep -Eq '^nebula_replans_total [1-9]' "$work/metrics.txt" || fail "nebula_replans_total: $(grep replans "$work/metrics.txt")"
# the passive estimate lags the drop; the next basis settles the model
at=$(steps)
for _ in $(seq 1 300); do [ "$(steps)" -ge $((at + 10)) ] && break; sleep 0.1; done
grep "planner: re-plan" "$work/coord.log" | grep -v "^$(echo "$line" | cut -c1-24)" | sed 's/^.*planner: /then: /'
# Each direction's estimate settles on its own (gradients lag activations by a
# few steps): poll the model for up to 30 s until both are near the new rate.
# "Near" is within 8x of the 5 Mbit/s, a fifth of the 200 it replaced: the
# passive estimate reads a tbf link high (its 32 KiB bucket lets each
# tensor's first bytes through at line rate, and a busy 2-core machine
# delivers frames in bursts; 5-22 Mbit/s in repeated runs here). The drop is
# to 5, not 20, because a starved receiver reads the 200 Mbit/s link as low
# as 60 (a sanitizer build on 2 cores): the contrast must survive that. How
# close the model gets is measured by tests/bench/planner_wan.bench.sh.
settled() {
  "$bin/nebulactl" --socket "$work/run/coord.sock" plan --json > "$work/plan.json" || return 2
  python3 - "$work/plan.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
l = j["measurements"]["links"][0]
fw, bw = l["forward"]["bandwidth_mbit"], l["backward"]["bandwidth_mbit"]
print("link model after the re-plan: %.1f Mbit/s forward, %.1f backward (tbf: 5)" % (fw, bw))
sys.exit(0 if 1.5 < fw < 40 and 1.5 < bw < 40 else 1)
PY
}
ok=1
for _ in $(seq 1 30); do
  settled > "$work/settled.txt"; rc=$?
  [ $rc -eq 2 ] && fail "plan"
  [ $rc -eq 0 ] && { ok=0; break; }
  sleep 1
done
cat "$work/settled.txt"
[ $ok -eq 0 ] || fail "the model did not take the new link rate: $(head -c 1500 "$work/plan.json")"
"$bin/nebulactl" --socket "$work/run/coord.sock" stop > /dev/null
echo "ok replan-wan"

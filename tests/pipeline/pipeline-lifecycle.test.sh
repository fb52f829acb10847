#!/usr/bin/env bash
# The daemons' lifecycle as docs/pipeline.md and docs/operations.md promise
# it, with real daemons on loopback over TLS:
#  1. a peer port in use: the daemon exits 1 naming the address and
#     "address already in use";
#  2. a stage that refuses the job (stage 0 without its token file) tells
#     the coordinator why and exits 1; so does the coordinator;
#  3. two clusters on one address: --check-config refuses the file;
#  4. the coordinator bounds its wait for the stages' links by
#     connect_timeout_s (a cluster address nothing listens on), naming the
#     stages, and every daemon exits 1;
#  5. a stage bounds its wait for the coordinator by connect_timeout_s;
#  6. a stage bounds its wait for its pipeline links by connect_timeout_s,
#     naming the neighbour;
#  7. job.output in a coordinator's file is refused (nothing in a pipeline
#     job writes it), naming where the weights go instead;
#  8. a job runs to its end within its deadlines (connect_timeout_s 6 s):
#     stage a writes its weights, stage b, without checkpoint_dir, says
#     that it writes none, and every daemon stays up in state done.
set -euo pipefail
build=${NB_BUILD:-build}
bin="$build/bin"
work=$(mktemp -d /tmp/nb-pipe-life.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$work"/*.log; do echo "--- $f"; tail -n 15 "$f"; done; exit 1; }

. tests/support/pipeline.sh
nb_pipe_prepare "$work" "$bin" || exit 1
# below the ephemeral range (32768-60999), where outgoing connections of
# other tests could hold one of our ports
base=$(( 10000 + ($$ % 500) * 10 ))
cp=$base ap=$((base + 1)) bp=$((base + 2)) down=$((base + 5))

# write_configs [COORD_TIMEOUT [STAGE_TIMEOUT [A_ADDR [B_ADDR]]]]: coord.yaml
# with connect_timeout_s COORD_TIMEOUT (default 60) and the clusters'
# addresses (defaults: a's and b's own), a.yaml and b.yaml with
# connect_timeout_s STAGE_TIMEOUT (default 60).
write_configs() {
  local ct=${1:-60} st=${2:-60} aa=${3:-127.0.0.1:$ap} ba=${4:-127.0.0.1:$bp}
  cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 0.2
heartbeat_timeout_s: 5
connect_timeout_s: $ct
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: false}
  data: data.tok
  batch: 4
  seq_len: 16
  steps: 3
  micro_batches: 2
  clusters:
    - {name: a, address: "$aa"}
    - {name: b, address: "$ba"}
YAML
  for n in a b; do
    p=$ap; [ $n = b ] && p=$bp
    nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 0.2 5 "checkpoint_dir: run/$n-weights" \
      "connect_timeout_s: $st"
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

wait_log() { # $1 file, $2 pattern, $3 seconds
  local i
  for i in $(seq 1 $(( $3 * 10 ))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# 1. the stage's peer port is held by the coordinator
write_configs
sed -i "s/^listen: .*/listen: \"127.0.0.1:$cp\"/" "$work/a.yaml"
"$bin/nebulad" --config "$work/coord.yaml" > "$work/c1.log" 2>&1 & c=$!; pids=($c)
wait_log "$work/c1.log" "waiting for 2 stage daemons" 60 || fail "1: the coordinator did not start listening"
"$bin/nebulad" --config "$work/a.yaml" > "$work/a1.log" 2>&1 & a=$!; pids+=($a)
wait_exit $a 60
[ "$st" = 1 ] || fail "1: stage exit status $st with its port in use, expected 1"
grep -q "start failed: listen 127.0.0.1:$cp: address already in use" "$work/a1.log" ||
  fail "1: the failure does not name the address and 'address already in use'"
kill $c; wait $c 2>/dev/null || true; pids=()
echo "ok 1: port in use: $(grep -o 'start failed: .*' "$work/a1.log")"

# 2. stage a refuses the job: its token file is missing
write_configs
sed -i "s/^data: .*/data: missing.tok/" "$work/a.yaml"
"$bin/nebulad" --config "$work/coord.yaml" > "$work/c2.log" 2>&1 & c=$!; pids=($c)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a2.log" 2>&1 & a=$!; pids+=($a)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b2.log" 2>&1 & b=$!; pids+=($b)
wait_exit $a 60; sa=$st
wait_exit $c 60; sc=$st
[ "$sa" = 1 ] || fail "2: the stage that refused the job: exit status $sa, expected 1"
[ "$sc" = 1 ] || fail "2: coordinator exit status $sc, expected 1"
grep -q "refusing job .*missing.tok" "$work/a2.log" || fail "2: stage a does not say why it refuses the job"
grep -q "job failed: stage daemon a: a: .*missing.tok" "$work/c2.log" || fail "2: the coordinator does not name a and why"
kill $b 2>/dev/null || true; wait $b 2>/dev/null || true; pids=()
echo "ok 2: a stage that refuses the job exits 1: $(grep -o 'job failed: .*' "$work/c2.log" | head -n 1)"

# 3. two clusters on one address
write_configs 60 60 127.0.0.1:$ap 127.0.0.1:$ap
set +e; out=$("$bin/nebulad" --check-config "$work/coord.yaml" 2>&1); rc=$?; set -e
[ $rc -eq 78 ] || fail "3: --check-config exit $rc for two clusters on one address, expected 78 ($out)"
[[ $out == "$work/coord.yaml:"*": job.clusters[1].address: duplicate address '127.0.0.1:$ap': clusters[0] (a) has it too"* ]] ||
  fail "3: unexpected message: $out"
echo "ok 3: ${out#"$work/"}"

# 4. cluster b's address in the job is wrong: the links never come up
write_configs 3 600 127.0.0.1:$ap 127.0.0.1:$down
"$bin/nebulad" --config "$work/coord.yaml" > "$work/c4.log" 2>&1 & c=$!; pids=($c)
wait_log "$work/c4.log" "waiting for 2 stage daemons" 60 || fail "4: the coordinator did not start listening"
"$bin/nebulad" --config "$work/a.yaml" > "$work/a4.log" 2>&1 & a=$!; pids+=($a)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b4.log" 2>&1 & b=$!; pids+=($b)
wait_exit $c 120; sc=$st
[ "$sc" = 1 ] || fail "4: coordinator exit status $sc, expected 1 (it must not wait forever for the links)"
grep -q "job failed: stage daemons did not report their pipeline links up within 3 s (connect_timeout_s) after the job was sent: a (127.0.0.1:$ap), b (127.0.0.1:$down)" "$work/c4.log" ||
  fail "4: the coordinator does not name the stages whose links are not up"
wait_exit $a 60; sa=$st; wait_exit $b 60; sb=$st
[ "$sa" = 1 ] && [ "$sb" = 1 ] || fail "4: stage exit statuses $sa $sb, expected 1 1"
pids=()
echo "ok 4: $(grep -o 'job failed: .*' "$work/c4.log" | head -n 1 | cut -c1-150)..."

# 5. a stage whose coordinator never comes
write_configs 60 2
"$bin/nebulad" --config "$work/a.yaml" > "$work/a5.log" 2>&1 & a=$!; pids=($a)
wait_exit $a 120
[ "$st" = 1 ] || fail "5: stage exit status $st without its coordinator, expected 1"
grep -q "job failed: coordinator coord at 127.0.0.1:$cp not connected within 2 s (connect_timeout_s)" "$work/a5.log" ||
  fail "5: the stage does not say what it waited for"
pids=()
echo "ok 5: $(grep -o 'job failed: .*' "$work/a5.log" | head -n 1)"

# 6. the stages' own deadline for their links (the coordinator's is longer)
write_configs 600 3 127.0.0.1:$ap 127.0.0.1:$down
"$bin/nebulad" --config "$work/coord.yaml" > "$work/c6.log" 2>&1 & c=$!; pids=($c)
wait_log "$work/c6.log" "waiting for 2 stage daemons" 60 || fail "6: the coordinator did not start listening"
"$bin/nebulad" --config "$work/a.yaml" > "$work/a6.log" 2>&1 & a=$!; pids+=($a)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b6.log" 2>&1 & b=$!; pids+=($b)
wait_exit $c 120; sc=$st
[ "$sc" = 1 ] || fail "6: coordinator exit status $sc, expected 1"
# whichever stage's deadline fires first names its neighbour
grep -q "job failed: stage daemon \(a: pipeline links not up within 3 s (connect_timeout_s) of the job: b (127.0.0.1:$down, dialled, not connected)\|b: pipeline links not up within 3 s (connect_timeout_s) of the job: a (127.0.0.1:$ap, not connected to us)\)" "$work/c6.log" ||
  fail "6: no stage named the neighbour it waited for"
wait_exit $a 60; sa=$st; wait_exit $b 60; sb=$st
[ "$sa" = 1 ] && [ "$sb" = 1 ] || fail "6: stage exit statuses $sa $sb, expected 1 1"
pids=()
echo "ok 6: $(grep -o 'job failed: .*' "$work/c6.log" | head -n 1)"

# 7. job.output is refused for a pipeline job
write_configs
sed -i "s#^  steps: 3#  steps: 3\n  output: run/model.weights#" "$work/coord.yaml"
grep -q "^  output: run/model.weights" "$work/coord.yaml" || fail "7: test setup: no job.output line"
for mode in --check-config --config; do
  set +e; out=$("$bin/nebulad" $mode "$work/coord.yaml" 2>&1); rc=$?; set -e
  [ $rc -eq 78 ] || fail "7: nebulad $mode exit $rc with job.output, expected 78 ($out)"
  [[ $out == "$work/coord.yaml:"*": job.output: not written by a pipeline job: each stage daemon writes its part of the model to its own checkpoint_dir as final-stageS.weights"* ]] ||
    fail "7: nebulad $mode: unexpected message: $out"
done
echo "ok 7: ${out#"$work/"}"

# 8. a whole job with short deadlines; b has no checkpoint_dir
write_configs 6 6
sed -i "/^checkpoint_dir:/d" "$work/b.yaml"
"$bin/nebulad" --config "$work/coord.yaml" > "$work/c8.log" 2>&1 & c=$!; pids=($c)
wait_log "$work/c8.log" "waiting for 2 stage daemons" 60 || fail "8: the coordinator did not start listening"
"$bin/nebulad" --config "$work/a.yaml" > "$work/a8.log" 2>&1 & a=$!; pids+=($a)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b8.log" 2>&1 & b=$!; pids+=($b)
wait_log "$work/c8.log" "job done: 3 steps" 120 || fail "8: the job did not finish"
wait_log "$work/b8.log" "checkpoint_dir is not set: the final weights of this daemon's stages are not written" 30 ||
  fail "8: stage b does not say that it writes no weights"
[ -s "$work/run/a-weights/final-stage0.weights" ] || fail "8: stage a wrote no weights"
sleep 7 # past every deadline: nothing may fail a finished job
for p in $c $a $b; do kill -0 $p 2>/dev/null || fail "8: a daemon exited after the job was done"; done
if grep -q "job failed" "$work/c8.log" "$work/a8.log" "$work/b8.log"; then fail "8: a job failed after it was done"; fi
kill $c $a $b; wait_exit $c 30; sc=$st; wait_exit $a 30; sa=$st; wait_exit $b 30; sb=$st
[ "$sc $sa $sb" = "0 0 0" ] || fail "8: exit statuses after SIGTERM $sc $sa $sb, expected 0 0 0"
pids=()
echo "ok 8: the job ran to its end; b: $(grep -o 'checkpoint_dir is not set.*' "$work/b8.log")"

#!/usr/bin/env bash
# A job that ends while a stage daemon is still building its part (real
# daemons on loopback over TLS; stage a's part is large enough to take a
# while to build). Stage a's loop thread then closes its mailboxes while its
# compute thread is still creating the inboxes:
#  1. SIGTERM to a while it builds: a stops in order (exit 0);
#  2. stage b refuses the job at once (its device cannot be opened) and the
#     coordinator ends the job while a builds: a fails the job with the
#     coordinator's reason and exits 1, instead of opening links for a job
#     that is over.
# No daemon may log a sanitizer report: with a -fsanitize=thread build
# (NB_BUILD=build/tsan) this is the test of the inbox race.
set -euo pipefail
build=${NB_BUILD:-build}
bin="$build/bin"
work=$(mktemp -d /tmp/nb-pipe-abort.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$work"/*.log; do echo "--- $f"; tail -n 40 "$f"; done; exit 1; }

. tests/support/pipeline.sh
nb_pipe_prepare "$work" "$bin" || exit 1

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

# Stage a hosts about 7 M parameters: building them takes far longer than
# b's refusal and the coordinator's Shutdown take to reach a.
write_configs() { # $1 b's extra line
cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 0.5
heartbeat_timeout_s: 30
connect_timeout_s: 60
job:
  model: {n_layer: 8, d_model: 384, n_head: 4, d_ff: 1536, vocab: 256, max_seq: 16, tie_embeddings: false}
  data: data.tok
  batch: 2
  seq_len: 16
  steps: 2
  micro_batches: 2
  planner: {enabled: false}
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
    - {name: b, address: 127.0.0.1:$bp}
YAML
nb_stage_yaml "$work/a.yaml" a "127.0.0.1:$ap" "127.0.0.1:$cp" 0.5 30
nb_stage_yaml "$work/b.yaml" b "127.0.0.1:$bp" "127.0.0.1:$cp" 0.5 30 ${1:+"$1"}
}

# start_job TAG [B_LINE]: the three daemons on free ports (another test may
# hold a port: a daemon that exits before listening is retried on others).
start_job() {
  local try
  for try in 1 2 3 4 5; do
    base=$(nb_port_base 10)
    cp=$base ap=$((base + 1)) bp=$((base + 2))
    write_configs "${2:-}"
    rm -rf "$work/run"; mkdir -p "$work/run"
    "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord$1.log" 2>&1 & c=$!; pids=($c)
    "$bin/nebulad" --config "$work/a.yaml" > "$work/a$1.log" 2>&1 & a=$!; pids+=($a)
    "$bin/nebulad" --config "$work/b.yaml" > "$work/b$1.log" 2>&1 & b=$!; pids+=($b)
    local n
    for n in $(seq 1 600); do
      [ "$(cat "$work"/{coord,a,b}$1.log 2>/dev/null | grep -c "listening on 127")" -ge 3 ] && return 0
      kill -0 $c 2>/dev/null && kill -0 $a 2>/dev/null && kill -0 $b 2>/dev/null || break
      sleep 0.1
    done
    [ $n -lt 600 ] || fail "$1: the daemons did not start listening within 60 s"
    echo "a daemon did not start (a port in use?): trying other ports"
    grep -h "ERROR" "$work"/{coord,a,b}$1.log | head -n 3
    stop_all
  done
  fail "$1: no free ports in 5 tries"
}
wait_log() { # $1 file, $2 pattern, $3 seconds
  local i
  for i in $(seq 1 $(( $3 * 10 ))); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
no_reports() {
  ! grep -l "ThreadSanitizer\|AddressSanitizer\|runtime error" "$work"/*.log || fail "$1: a sanitizer reported a problem"
}
stop_all() { kill -TERM "${pids[@]}" 2>/dev/null || true; for p in "${pids[@]}"; do wait_exit $p 60; done; pids=(); }

# 1. SIGTERM while a builds its part
start_job 1 ""
wait_log "$work/a1.log" "job [0-9]* received from coord" 120 || fail "1: stage a got no job"
kill -TERM $a
wait_exit $a 120
[ "$st" = 0 ] || fail "1: stage a exit status $st after SIGTERM, expected 0"
stop_all
no_reports 1
if grep -q "ended while its stages were being built" "$work/a1.log"; then when="while a was building its part"
else when="after a had built its part"; fi
echo "ok 1: SIGTERM $when: a stopped in order"

# 2. b refuses, the coordinator ends the job while a builds
start_job 2 "devices: [cuda:0]"
wait_exit $c 120
grep -q "refusing job" "$work/b2.log" || { stop_all; echo "skip: stage b opened cuda:0, so nothing refused the job"; exit 77; }
[ "$st" = 1 ] || fail "2: coordinator exit status $st, expected 1"
grep -q "job failed: stage daemon b: .*cuda:0" "$work/coord2.log" || fail "2: the coordinator does not name stage b and its device"
wait_exit $a 120
[ "$st" = 1 ] || fail "2: stage a exit status $st, expected 1 (the job was ended by the coordinator)"
grep -q "job failed: \(the coordinator ended the job\|lost the coordinator\)" "$work/a2.log" || fail "2: stage a does not say why the job ended"
! grep -q "connecting to pipeline neighbours\|pipeline link" "$work/a2.log" || fail "2: stage a opened links for a job that was over"
stop_all
no_reports 2
if grep -q "ended while its stages were being built" "$work/a2.log"; then when="while a was building its part"
else when="after a had built its part"; fi
echo "ok 2: the coordinator ended the job $when: a failed it with the reason"

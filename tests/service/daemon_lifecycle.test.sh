#!/usr/bin/env bash
# Starts real nebulad daemons (a stage and a coordinator, loopback only, all
# files in a temporary directory) and drives them with nebulactl as an
# operator would: status, metrics, trace, SIGHUP reload, stop through the
# socket, SIGTERM, a stale socket after kill -9, a second daemon on a socket
# in use.
set -u
B=${NB_BUILD:-build}/bin
D=$(realpath "$B/nebulad")
C=$(realpath "$B/nebulactl")
. tests/support/assert.sh
nb_work_init lifecycle
tmp=$work
nb_on_fail() { nb_tail_logs 20; }

# Waits are for events, with deadlines generous enough for a sanitizer
# build on a busy machine. The reload reads its file on a worker thread:
# wait for its log line.
wait_log() { nb_wait_for 60 grep -q -- "$1" "$tmp/stage.log"; }
wait_for_socket() { nb_wait_for 60 test -S "$1" || fail "no socket $1 within 60 s"; }
# wait_exit PID SECONDS -> sets $st to the exit status
wait_exit() {
  nb_wait_for "$2" eval "! kill -0 $1 2>/dev/null" || fail "pid $1 still running after $2 s"
  wait "$1"; st=$?
}

cat > "$tmp/stage.yaml" <<'Y'
name: s1
role: stage
listen: 127.0.0.1:0
tls: {cert: tls/s1.crt, key: tls/s1.key, ca: tls/ca.crt}
coordinator: {address: "127.0.0.1:9", name: coord}
status_socket: run/s1.sock
log_level: info
Y
cat > "$tmp/coord.yaml" <<'Y'
name: coord
role: coordinator
listen: 127.0.0.1:0
tls: {cert: a, key: b, ca: c}
status_socket: run/coord.sock
job:
  model: {n_layer: 4, d_model: 64, n_head: 4, vocab: 256, tie_embeddings: false}
  batch: 8
  seq_len: 16
  steps: 25
  micro_batches: 4
  schedule: 1f1b
  codecs: {forward: fp16, backward: int8}
  clusters:
    - {name: east, address: "127.0.0.1:7901", layers: 0-1}
    - {name: west, address: "127.0.0.1:7902", layers: 2-3}
Y
S="$tmp/run/s1.sock"

# ---- stage: start, inspect ----------------------------------------------------
"$D" --config "$tmp/stage.yaml" >"$tmp/stage.log" 2>&1 & pid=$!; pids+=($pid)
wait_for_socket "$S"
[ "$(stat -c %a "$S")" = 660 ] || fail "socket mode $(stat -c %a "$S")"
[ "$(stat -c %a "$tmp/run")" = 750 ] || fail "socket dir mode $(stat -c %a "$tmp/run")"
out=$("$C" --socket "$S" status) || fail "status exit $?"
echo "$out"
grep -q '^role      stage' <<<"$out" || fail "status role"
# The coordinator at 127.0.0.1:9 never answers: the stage waits for it.
grep -Eq '^state     (waiting|connecting) \(.*coord' <<<"$out" || fail "status state"
grep -Eq '^coord +coordinator +127\.0\.0\.1:9 +(waiting|connecting) ' <<<"$out" || fail "peer row"
grep -q '^job       none on this daemon' <<<"$out" || fail "stage has no job"
js=$("$C" --socket "$S" --json status) || fail "json status"
grep -Eq '"state":"(waiting|connecting)"' <<<"$js" && grep -q '"ok":true' <<<"$js" || fail "json: $js"
m=$("$C" --socket "$S" metrics) || fail "metrics"
grep -q '^nebula_info{name="s1",role="stage",version="' <<<"$m" || fail "metrics info: $m"
grep -q '^# TYPE nebula_status_requests_total counter' <<<"$m" || fail "metrics type"
grep -Eq '^nebula_status_requests_total [3-9]' <<<"$m" || fail "request counter"
"$C" --socket "$S" trace -o "$tmp/trace.json" | grep -q "wrote 0 events" || fail "trace -o"
grep -q '"traceEvents"' "$tmp/trace.json" || fail "trace file"

# ---- SIGHUP: log level applied, listen change named, broken file kept out ----
sed -i 's/^log_level: info/log_level: debug/; s/^listen: 127.0.0.1:0/listen: 127.0.0.1:1/' "$tmp/stage.yaml"
kill -HUP $pid
wait_log 'reload done' || fail "reload not done within 60 s"
grep -q 'reload: log_level info -> debug' "$tmp/stage.log" || fail "reload log level"
grep -q 'changed but not applied until restart: listen' "$tmp/stage.log" || fail "reload names listen"
cp "$tmp/stage.yaml" "$tmp/stage.good"
echo 'bogus_key: 1' >> "$tmp/stage.yaml"
kill -HUP $pid
wait_log 'reload failed, running configuration kept: .*stage.yaml:8:1: bogus_key: unknown key' || fail "bad reload"
# a deeply nested file: refused at once, with its position
{ cat "$tmp/stage.good"; printf 'extra: '; head -c 100000 /dev/zero | tr '\0' '['; head -c 100000 /dev/zero | tr '\0' ']'; echo; } > "$tmp/stage.yaml"
kill -HUP $pid
wait_log 'reload failed, running configuration kept: .*stage.yaml:8:71: yaml: nesting deeper than 64 levels' || fail "deep reload"
cp "$tmp/stage.good" "$tmp/stage.yaml"
"$C" --socket "$S" status >/dev/null || fail "daemon stopped serving after a bad reload"
"$C" --socket "$S" metrics | grep -q '^nebula_reloads_total 1$' || fail "reload counter"

# ---- stop through the socket ---------------------------------------------------
"$C" --socket "$S" stop | grep -q stopping || fail "stop reply"
wait_exit $pid 60; [ $st -eq 0 ] || fail "stop: exit $st"
[ ! -e "$S" ] || fail "socket left after stop"
grep -q 'stop requested on the status socket by uid' "$tmp/stage.log" || fail "stop not logged"

# ---- coordinator: job held, stages named; SIGTERM -------------------------------
CS="$tmp/run/coord.sock"
"$D" --config "$tmp/coord.yaml" >"$tmp/coord.log" 2>&1 & pid=$!; pids+=($pid)
wait_for_socket "$CS"
out=$("$C" --socket "$CS" status) || fail "coord status"
echo "$out"
# No stage daemon runs at 7901/7902: the coordinator holds the job and waits.
grep -Eq '^state     (waiting|connecting) \(.*(stage|east)' <<<"$out" || fail "coord state"
grep -Eq '^east +stage +127\.0\.0\.1:7901 +(waiting|connecting) ' <<<"$out" || fail "coord peers"
grep -Eq '^west +stage +127\.0\.0\.1:7902 +(waiting|connecting) ' <<<"$out" || fail "coord peers"
grep -Eq '^job       step [01]/25 ' <<<"$out" || fail "coord job line"
grep -q 'schedule 1f1b  codecs forward fp16 backward int8' <<<"$out" || fail "coord plan line"
# A second daemon on the same socket must refuse, not steal it.
"$D" --config "$tmp/coord.yaml" >"$tmp/coord2.log" 2>&1; st=$?
[ $st -eq 1 ] && grep -q 'is in use by a running daemon' "$tmp/coord2.log" || fail "second daemon: exit $st"
"$C" --socket "$CS" status >/dev/null || fail "first daemon lost its socket"
kill -TERM $pid; wait_exit $pid 60; [ $st -eq 0 ] || fail "SIGTERM: exit $st"
[ ! -e "$CS" ] || fail "socket left after SIGTERM"
grep -q 'state stopping: SIGTERM received' "$tmp/coord.log" || fail "SIGTERM not logged"

# ---- stale socket after kill -9 is replaced; SIGINT stops ----------------------
"$D" --config "$tmp/coord.yaml" >"$tmp/coord3.log" 2>&1 & pid=$!; pids+=($pid)
wait_for_socket "$CS"; kill -9 $pid; wait $pid 2>/dev/null
[ -S "$CS" ] || fail "expected a stale socket after kill -9"
"$C" --socket "$CS" status >/dev/null 2>&1; [ $? -eq 3 ] || fail "stale socket should give exit 3"
"$D" --config "$tmp/coord.yaml" >"$tmp/coord4.log" 2>&1 & pid=$!; pids+=($pid)
nb_wait_for 60 eval '"$C" --socket "$CS" status >/dev/null 2>&1' || fail "restart over a stale socket"
grep -q 'removed stale status socket' "$tmp/coord4.log" || fail "stale removal not logged"
kill -INT $pid; wait_exit $pid 60; [ $st -eq 0 ] || fail "SIGINT: exit $st"
echo "daemon lifecycle ok"

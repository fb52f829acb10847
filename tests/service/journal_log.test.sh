#!/usr/bin/env bash
# Log lines: with stderr connected to "the journal" (JOURNAL_STREAM names
# stderr's device and inode) every line starts with a <N> syslog priority and
# names the daemon; otherwise lines are plain with a time stamp.
set -u
B=${NB_BUILD:-build}/bin
D=$(realpath "$B/nebulad"); C=$(realpath "$B/nebulactl")
. tests/support/assert.sh
nb_work_init journal-log
tmp=$work
nb_on_fail() { cat "$tmp"/*.log; }
cat > "$tmp/s.yaml" <<'Y'
name: jstage
role: stage
listen: 127.0.0.1:0
tls: {cert: a, key: b, ca: c}
coordinator: {address: "127.0.0.1:9", name: coord}
status_socket: run/j.sock
Y
run() { # $1: journal or plain
  : > "$tmp/$1.log"
  if [ "$1" = journal ]; then
    JOURNAL_STREAM=$(stat -c '%d:%i' "$tmp/$1.log") "$D" --config "$tmp/s.yaml" 2>>"$tmp/$1.log" & pid=$!; pids+=($pid)
  else
    env -u JOURNAL_STREAM "$D" --config "$tmp/s.yaml" 2>>"$tmp/$1.log" & pid=$!; pids+=($pid)
  fi
  nb_wait_for 60 eval '"$C" --socket "$tmp/run/j.sock" status >/dev/null 2>&1' || fail "no status socket within 60 s ($1)"
  "$C" --socket "$tmp/run/j.sock" stop >/dev/null || fail "stop ($1)"
  wait $pid; st=$?
  [ $st -eq 0 ] || fail "exit $st ($1)"
}
run journal
grep -q '^<6>INFO jstage -: starting stage jstage' "$tmp/journal.log" || fail "journal line format"
bad=$(grep -cv '^<[0-7]>' "$tmp/journal.log")
[ "$bad" -eq 0 ] || fail "$bad journal lines without a priority prefix"
run plain
grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z INFO  jstage -: starting stage jstage' "$tmp/plain.log" || fail "plain line format"
expect_no_grep '^<' "$tmp/plain.log" "plain log has priority prefixes"
echo "journal and plain log formats ok"

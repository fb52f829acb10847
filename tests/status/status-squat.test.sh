#!/usr/bin/env bash
# Members of the status socket's group hold idle connections to a real
# nebulad, as many as it lets them; root must still get `nebulactl status`
# and `nebulactl stop` through, and a refused user must be told why (not a
# broken pipe). Needs root (other uids) and python3 for the squatters.
set -u
B=${NB_BUILD:-build}/bin
[ "$(id -u)" = 0 ] || { echo "skip: needs root to connect as other uids"; exit 77; }
PY=/usr/bin/python3
[ -x $PY ] || { echo "skip: no $PY for the squatting clients"; exit 77; }
command -v setpriv >/dev/null || { echo "skip: no setpriv"; exit 77; }
tmp=$(mktemp -d)
chmod 755 "$tmp"
pids=()
cleanup() { for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; for l in "$tmp"/*.log; do [ -f "$l" ] && { echo "== $l"; tail -n 20 "$l"; }; done; exit 1; }
cp "$B/nebulad" "$B/nebulactl" "$tmp/"
C="$tmp/nebulactl"
S="$tmp/run/s1.sock"

mkdir -p "$tmp/tls"
cat > "$tmp/stage.yaml" <<'Y'
name: s1
role: stage
listen: 127.0.0.1:0
tls: {cert: tls/s1.crt, key: tls/s1.key, ca: tls/ca.crt}
coordinator: {address: "127.0.0.1:9", name: coord}
status_socket: run/s1.sock
Y
"$tmp/nebulad" --config "$tmp/stage.yaml" > "$tmp/stage.log" 2>&1 & pid=$!; pids+=($pid)
for _ in $(seq 200); do [ -S "$S" ] && break; sleep 0.05; done
[ -S "$S" ] || fail "no status socket"
# Let every uid reach the socket, so the daemon's own limits are what is tested.
chmod 755 "$tmp/run"; chmod 666 "$S"

cat > "$tmp/squat.py" <<'P'
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
held, ok, busy = [], 0, 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    try:
        s.sendall(b'{"cmd":"status"}\n')
    except OSError:
        pass  # refused and closed already: the reason is still there to read
    s.settimeout(30)
    line = b""
    try:
        while not line.endswith(b"\n"):
            d = s.recv(65536)
            if not d:
                break
            line += d
    except OSError:
        pass
    if b'"ok":true' in line:
        ok += 1
        held.append(s)
    elif b"status socket busy" in line:
        busy += 1
print(ok, busy, flush=True)
time.sleep(600)  # the test's cleanup kills it long before
P
# squat UID N -> sets r to "OK BUSY" once all N tried; keeps the served ones
# open. Runs in this shell (not in $(...)), so cleanup knows every squatter.
squat() {
  setpriv --reuid "$1" --regid "$1" --clear-groups $PY "$tmp/squat.py" "$S" "$2" > "$tmp/squat-$1.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do [ -s "$tmp/squat-$1.out" ] && break; sleep 0.1; done
  r=$(cat "$tmp/squat-$1.out")
}

squat 60001 10; [ "$r" = "8 2" ] || fail "uid 60001 asked for 10 connections: served/refused '$r', expected '8 2'"
for u in 60002 60003 60004 60005 60006 60007; do
  squat $u 8; [ "$r" = "8 0" ] || fail "uid $u: served/refused '$r', expected '8 0'"
done
squat 60008 8; [ "$r" = "0 8" ] || fail "uid 60008 (56 held by other users): '$r', expected '0 8'"
# a refused user is told why
out=$(setpriv --reuid 60001 --regid 60001 --clear-groups "$C" --socket "$S" status 2>&1); rc=$?
[ $rc -eq 1 ] || fail "refused nebulactl: exit $rc, expected 1 (error reply): $out"
grep -q "status socket busy: uid 60001 already has 8 connections (at most 8 per user)" <<<"$out" || fail "refusal reason: $out"
out=$(setpriv --reuid 60009 --regid 60009 --clear-groups "$C" --socket "$S" status 2>&1)
grep -q "the last 8 of 64 are kept for uid 0" <<<"$out" || fail "reserve refusal reason: $out"
# 12 refusals so far, logged at most once per 10 s
n=$(grep -c '; refused$' "$tmp/stage.log")
[ "$n" -ge 1 ] && [ "$n" -le 4 ] || fail "$n refusal lines logged for 12 refusals"
# root is still served, and can stop the daemon
"$C" --socket "$S" status > "$tmp/status.out" 2>&1 || fail "root's status refused: $(cat "$tmp/status.out")"
grep -q "^name *s1" "$tmp/status.out" || fail "root's status output"
"$C" --socket "$S" stop | grep -q stopping || fail "root's stop"
for _ in $(seq 200); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done
kill -0 $pid 2>/dev/null && fail "daemon still running after stop"
wait $pid; st=$?
[ $st -eq 0 ] || fail "daemon exit $st after stop"
echo "ok: 56 connections from 7 other users, root served and stopped the daemon"

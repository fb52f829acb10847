#!/usr/bin/env bash
# netprobe.test.sh - nebula-netprobe on loopback: two processes, mutual TLS,
# RTT and bandwidth both ways; a client with the wrong expected name is
# refused for that reason (checked against a server known to be up), exits 1
# and prints no figures.
set -u
. tests/support/assert.sh
build=${NB_BUILD:-build}
probe="$build/bin/nebula-netprobe"
[ -x "$probe" ] || fail "no $probe"
nb_work_init netprobe
nb_on_fail() { nb_tail_logs 20; }
scripts/gen-certs.sh "$work" a b >/dev/null || fail "gen-certs"
. tests/support/pipeline.sh
port=$(nb_port_base 10)
"$probe" --listen 127.0.0.1:$port --name b --peer a --cert "$work/b.pem" --key "$work/b.key" \
  --ca "$work/ca.pem" >"$work/srv.log" 2>&1 &
srv=$!
pids+=($srv)
# the server is up once it accepts a TCP connection (its log then shows a
# refused handshake, which nothing below counts)
listening() { kill -0 $srv 2>/dev/null || fail "the server exited: $(cat "$work/srv.log")"; (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
nb_wait_for 60 listening || fail "the server does not accept connections on port $port within 60 s"
# wrong expected name: refused for the name, exit 1, no figures
if "$probe" --connect 127.0.0.1:$port --name a --peer c --cert "$work/a.pem" --key "$work/a.key" \
     --ca "$work/ca.pem" --timeout 2 >"$work/bad.log" 2>&1; then
  fail "connected to b while expecting c"
fi
expect_grep "refused TLS to 127.0.0.1:$port: wrong_name" "$work/bad.log" "the client was not refused for the wrong name"
expect_no_grep rtt_ms "$work/bad.log" "figures from a refused connection"
out=$("$probe" --connect 127.0.0.1:$port --name a --peer b --cert "$work/a.pem" --key "$work/a.key" \
  --ca "$work/ca.pem" --bytes $((4 << 20)) --rounds 3 --timeout 60) || fail "probe exit $?"
echo "$out"
for k in rtt_ms tx_mbit rx_mbit; do
  v=$(awk -v k=$k '$1==k {print $2}' <<<"$out")
  [ -n "$v" ] || fail "no $k"
  awk -v v="$v" 'BEGIN { exit !(v > 0) }' || fail "$k = $v"
done
# usage errors are reported, not crashed on
"$probe" --connect 127.0.0.1:1 >/dev/null 2>&1
[ $? -eq 2 ] || fail "usage error exit"
echo ok

#!/usr/bin/env bash
# netprobe.test.sh - nebula-netprobe on loopback: two processes, mutual TLS,
# RTT and bandwidth both ways; a client with the wrong expected name fails.
set -u
build=${NB_BUILD:-build}
probe="$build/bin/nebula-netprobe"
[ -x "$probe" ] || { echo "no $probe"; exit 1; }
dir=$(mktemp -d)
srv=
cleanup() { [ -n "$srv" ] && kill "$srv" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$dir/srv.log" ] && cat "$dir/srv.log"; exit 1; }
scripts/gen-certs.sh "$dir" a b || fail "gen-certs"
port=$((20000 + RANDOM % 20000))
"$probe" --listen 127.0.0.1:$port --name b --peer a --cert "$dir/b.pem" --key "$dir/b.key" \
  --ca "$dir/ca.pem" >"$dir/srv.log" 2>&1 &
srv=$!
sleep 0.3
# wrong expected name: refused, exit 1, no figures
if "$probe" --connect 127.0.0.1:$port --name a --peer c --cert "$dir/a.pem" --key "$dir/a.key" \
     --ca "$dir/ca.pem" --timeout 2 >"$dir/bad.out" 2>&1; then
  fail "connected to b while expecting c"
fi
grep -q rtt_ms "$dir/bad.out" && fail "figures from a refused connection"
out=$("$probe" --connect 127.0.0.1:$port --name a --peer b --cert "$dir/a.pem" --key "$dir/a.key" \
  --ca "$dir/ca.pem" --bytes $((4 << 20)) --rounds 3 --timeout 20) || fail "probe exit $?"
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

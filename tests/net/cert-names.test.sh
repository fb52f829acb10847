#!/usr/bin/env bash
# scripts/gen-certs.sh makes certificates for every name a config accepts
# (letters, digits, '.', '-', '_'), and two daemons so named authenticate each
# other over mutual TLS (nebula-netprobe); a name a config refuses is refused.
# Also: the command-line tools answer --help and --version.
set -euo pipefail
build=${NB_BUILD:-build}
probe="$build/bin/nebula-netprobe"
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$probe" ] || fail "no $probe"
dir=$(mktemp -d)
srv=
cleanup() { [ -n "$srv" ] && kill "$srv" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

scripts/gen-certs.sh "$dir" east_1 west.2-b > /dev/null || fail "gen-certs refused names a config accepts"
set +e
scripts/gen-certs.sh "$dir" 'bad name' > /dev/null 2> "$dir/err"; rc=$?
set -e
[ $rc -eq 2 ] || fail "a name with a space: exit $rc, not 2"
grep -q "bad daemon name 'bad name'" "$dir/err" || fail "no reason given: $(cat "$dir/err")"
[ ! -e "$dir/bad name.pem" ] || fail "a certificate was made for a refused name"

"$probe" --listen 127.0.0.1:0 --name west.2-b --peer east_1 --cert "$dir/west.2-b.pem" \
  --key "$dir/west.2-b.key" --ca "$dir/ca.pem" > "$dir/srv.log" 2>&1 &
srv=$!
# the listener binds port 0 and logs the port it got; wait for it
port=
for _ in $(seq 1 600); do
  port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/srv.log" | head -n1)
  [ -n "$port" ] && break
  kill -0 "$srv" 2>/dev/null || fail "listener died: $(cat "$dir/srv.log")"
  sleep 0.1
done
[ -n "$port" ] || fail "listener never said its port: $(cat "$dir/srv.log")"
out=$("$probe" --connect 127.0.0.1:"$port" --name east_1 --peer west.2-b --cert "$dir/east_1.pem" \
  --key "$dir/east_1.key" --ca "$dir/ca.pem" --bytes $((1 << 20)) --rounds 1 --timeout 60) \
  || fail "east_1 -> west.2-b failed: $(cat "$dir/srv.log")"
grep -q '^rtt_ms ' <<<"$out" || fail "no figures: $out"

for t in nebulad nebulactl nebula-train nebula-tokenize nebula-netprobe; do
  "$build/bin/$t" --help > "$dir/help" 2>&1 || fail "$t --help exit $?"
  grep -qi 'usage' "$dir/help" || fail "$t --help prints no usage"
  "$build/bin/$t" --version | grep -q "^$t [0-9]" || fail "$t --version"
done
echo ok

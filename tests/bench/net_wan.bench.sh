#!/usr/bin/env bash
# net_wan.bench.sh - bandwidth measured by the transport's probe through an
# emulated 100 Mbit/s WAN link (scripts/wan-emu.sh: two namespaces, veth,
# tc tbf), in both directions, over mutually authenticated TLS.
# Prints: bench net_probe_tx_100mbit <Mbit/s> Mbit/s, ..._rx_..., and the
# ratio of the lower one to the configured rate (target 0.9 .. 1.1).
# Skips (exit 77) when not root or without netns/tc/tbf.
set -u
build=${NB_BUILD:-build}
probe="$build/bin/nebula-netprobe"
rate=${NB_WAN_RATE_MBIT:-100}
[ -x "$probe" ] || { echo "no $probe (run make first)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "net_wan: needs root for network namespaces"; exit 77; }
command -v tc >/dev/null || { echo "net_wan: no tc"; exit 77; }
dir=$(mktemp -d)
ns=nbw$$
ns=${ns:0:8}
cleanup() { [ -n "${srv:-}" ] && kill "$srv" 2>/dev/null; wait 2>/dev/null; scripts/wan-emu.sh down "$ns" >/dev/null 2>&1; rm -rf "$dir"; }
trap cleanup EXIT
scripts/gen-certs.sh "$dir" a b
scripts/wan-emu.sh up "$ns" "$rate"
rc=$?
[ $rc -eq 0 ] || exit $rc
ip netns exec "$ns-b" "$probe" --listen 10.77.0.2:47300 --name b --peer a \
  --cert "$dir/b.pem" --key "$dir/b.key" --ca "$dir/ca.pem" --once &
srv=$!
sleep 0.3
out=$(ip netns exec "$ns-a" "$probe" --connect 10.77.0.2:47300 --name a --peer b \
  --cert "$dir/a.pem" --key "$dir/a.key" --ca "$dir/ca.pem" --bytes $((16 << 20)) --rounds 3 --timeout 90)
rc=$?
echo "$out"
[ $rc -eq 0 ] || { echo "net_wan: probe failed ($rc)"; exit 1; }
tx=$(echo "$out" | awk '$1=="tx_mbit"{print $2}')
rx=$(echo "$out" | awk '$1=="rx_mbit"{print $2}')
echo "bench net_probe_tx_${rate}mbit $tx Mbit/s"
echo "bench net_probe_rx_${rate}mbit $rx Mbit/s"
awk -v a="$tx" -v b="$rx" -v r="$rate" 'BEGIN { m = a < b ? a : b; printf "bench net_probe_vs_tbf_rate %.3f ratio\n", m / r }'

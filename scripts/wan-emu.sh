#!/usr/bin/env bash
# wan-emu.sh - emulates a WAN link between two network namespaces for tests
# and benchmarks (root only): NAME-a (10.77.0.1) and NAME-b (10.77.0.2) are
# joined by a veth pair whose both ends are shaped with `tc qdisc ... tbf` to
# RATE Mbit/s. This kernel has tbf but no netem, so latency is emulated
# inside the transport instead (nb_net_cfg_t.emu_send_delay_ms, tests only).
#
#   scripts/wan-emu.sh up NAME RATE_MBIT     create (replacing a stale one)
#   scripts/wan-emu.sh down NAME             remove; safe to repeat
#   scripts/wan-emu.sh run NAME RATE_MBIT -- CMD...
#        create, run CMD (which may use `ip netns exec NAME-a ...`), always
#        remove afterwards, exit with CMD's status
# NB_WAN_STRICT=1: MTU-sized packets (gso_max_size 1500) and a 16 KB bucket
# instead of 64 KiB segments and a 256 KB one, so that a transfer of a few
# hundred KB after an idle spell is not mostly carried by the bucket (at
# 2 Mbit/s the default bucket is a whole second of the link).
# Exit 77 when not root or when ip/tc/netns/tbf are unavailable (test skip).
set -euo pipefail

usage() { echo "usage: $0 up NAME RATE_MBIT | down NAME | run NAME RATE_MBIT -- CMD..." >&2; exit 2; }

need() {
  if [ "$(id -u)" != 0 ]; then echo "wan-emu: needs root" >&2; exit 77; fi
  for t in ip tc; do
    command -v "$t" >/dev/null || { echo "wan-emu: $t not found" >&2; exit 77; }
  done
}

down() {
  local n=$1
  ip netns del "$n-a" 2>/dev/null || true
  ip netns del "$n-b" 2>/dev/null || true
}

up() {
  local n=$1 rate=$2
  case "$n" in ''|*[!a-z0-9]*) echo "wan-emu: NAME must be lowercase letters and digits" >&2; exit 2 ;; esac
  case "$rate" in ''|*[!0-9]*) echo "wan-emu: RATE_MBIT must be a whole number" >&2; exit 2 ;; esac
  [ ${#n} -le 8 ] || { echo "wan-emu: NAME at most 8 characters" >&2; exit 2; }
  down "$n"
  if ! ip netns add "$n-a" 2>/dev/null; then echo "wan-emu: cannot create network namespaces" >&2; exit 77; fi
  ip netns add "$n-b"
  # The veth ends are created inside the namespaces, never in the host's.
  ip -n "$n-a" link add "v$n-a" type veth peer name "v$n-b" netns "$n-b"
  ip -n "$n-a" addr add 10.77.0.1/24 dev "v$n-a"
  ip -n "$n-b" addr add 10.77.0.2/24 dev "v$n-b"
  for s in a b; do
    ip -n "$n-$s" link set lo up
    ip -n "$n-$s" link set "v$n-$s" up
    # burst: a few 64 KiB GSO segments; latency bounds the queue (~50 ms).
    local burst=256kb
    if [ "${NB_WAN_STRICT:-0}" = 1 ]; then
      ip -n "$n-$s" link set "v$n-$s" gso_max_size 1500
      burst=16kb
    fi
    if ! ip netns exec "$n-$s" tc qdisc add dev "v$n-$s" root tbf rate "${rate}mbit" \
         burst "$burst" latency 50ms 2>/dev/null; then
      down "$n"; echo "wan-emu: tc tbf not available" >&2; exit 77
    fi
  done
}

[ $# -ge 2 ] || usage
cmd=$1 name=$2
case "$cmd" in
  up) [ $# -eq 3 ] || usage; need; up "$name" "$3" ;;
  down) need; down "$name" ;;
  run)
    [ $# -ge 5 ] && [ "$4" = "--" ] || usage
    need
    rate=$3; shift 4
    up "$name" "$rate"
    trap 'down "$name"' EXIT INT TERM
    set +e
    "$@"
    rc=$?
    exit $rc ;;
  *) usage ;;
esac

# wan.sh - the shared start of the scripts that run daemons on both sides
# of an emulated WAN link (scripts/wan-emu.sh): a work directory, the
# daemons' pids, and at exit their stop, the namespaces' removal and the
# directory's. Source it from the repository root.
#
#   nb_wan_work_init PREFIX NS   sets work (a new /tmp/PREFIX.XXXXXX), ns
#                                (the wan-emu.sh name) and pids=(); the
#                                caller appends each daemon's pid to pids

nb_wan_cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null
  scripts/wan-emu.sh down "$ns" >/dev/null 2>&1
  rm -rf "$work"
}

nb_wan_work_init() {
  ns=$2
  work=$(mktemp -d "/tmp/$1.XXXXXX") || exit 1
  pids=()
  trap nb_wan_cleanup EXIT
}

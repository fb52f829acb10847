#!/usr/bin/env bash
# Runs every benchmark given and prints their "bench <name> <value> <unit>"
# lines (other output goes to $NB_BUILD/bench-logs/). Benchmarks report ratios
# against a baseline measured in the same run; see docs/benchmarks.md.
set -u
build=${NB_BUILD:-build}
logs="$build/bench-logs"
mkdir -p "$logs"
rc_all=0
for b in "$@"; do
  log="$logs/$(basename "$b").log"
  case "$b" in
    *.sh) NB_BUILD="$build" bash "$b" >"$log" 2>&1; rc=$? ;;
    *)    "$b" >"$log" 2>&1; rc=$? ;;
  esac
  grep '^bench ' "$log"
  if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
    echo "# $(basename "$b") failed (exit $rc); see $log" >&2; rc_all=1
  elif [ $rc -eq 77 ]; then
    echo "# $(basename "$b") skipped: $(tail -n1 "$log")" >&2
  fi
done
exit $rc_all

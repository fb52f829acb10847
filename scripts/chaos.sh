#!/usr/bin/env bash
# chaos.sh - the long chaos run (docs/operations.md, "Faults, checkpoints
# and recovery"): a coordinator and three stage daemons train for a few
# hundred steps while at least ten faults hit them at random moments (kill
# -9 of a stage or of the coordinator, SIGSTOP past the heartbeat timeout,
# kill -9 during a checkpoint, and, as root, a link taken down for 5 s
# between network namespaces), each daemon restarted 1 s after it dies as
# systemd would; the final weights must equal an uninterrupted run's, to the
# bit. It is tests/pipeline/pipeline-chaos.test.sh (which `make test` runs
# short) with more steps and faults.
#
#   scripts/chaos.sh [STEPS [FAULTS [SEED]]]     defaults: 400 12 random
#
# Run from the repository root after `make`. Exit 0 when the weights are
# equal; the faults, the recoveries and the steps run again are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
netns=0
[ "$(id -u)" = 0 ] && netns=1
exec env CHAOS_STEPS="${1:-400}" CHAOS_FAULTS="${2:-12}" ${3:+CHAOS_SEED="$3"} CHAOS_NETNS="${CHAOS_NETNS:-$netns}" \
  NB_BUILD="${NB_BUILD:-build}" bash tests/pipeline/pipeline-chaos.test.sh

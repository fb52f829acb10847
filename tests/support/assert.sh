# assert.sh - checks and scratch space for the shell tests: sourced, never
# run. Every check here either passes or ends the script with "FAIL: why"
# (exit 1); none of them can be silenced by set -e's exceptions (a command
# before && or after !), so they hold with and without set -e. A check that
# cannot run here (no root, no tool) ends the script with nb_skip (exit 77),
# which scripts/run-tests.sh counts as skipped, never as passed.
#
# A test may define nb_on_fail (e.g. to print its daemons' logs); fail calls
# it before exiting.

# The script's own stdout, kept so that a failure is reported even from
# inside a command whose output the caller redirected (expect_rc ... 2>f).
exec {nb_report_fd}>&1

# fail WHY...: reports the failure, runs nb_on_fail if defined, exits 1.
fail() {
  echo "FAIL: $*" >&"$nb_report_fd"
  if declare -F nb_on_fail >/dev/null; then nb_on_fail >&"$nb_report_fd" 2>&1 || true; fi
  exit 1
}

# nb_skip WHY...: the test cannot run here; exit 77 (skipped).
nb_skip() {
  echo "skipped: $*" >&"$nb_report_fd"
  exit 77
}

# expect_rc WANT CMD [ARG...]: runs CMD (its output goes where the caller
# redirected it) and fails unless it exits with status WANT. Sets $rc.
expect_rc() {
  local want=$1
  shift
  rc=0
  "$@" || rc=$?
  [ "$rc" -eq "$want" ] || fail "exit status $rc, want $want: $*"
}

# expect_grep PATTERN FILE [WHY]: fails unless FILE has a line matching the
# basic regular expression PATTERN; the message shows FILE's last lines.
expect_grep() {
  grep -q -- "$1" "$2" 2>/dev/null ||
    fail "${3:-no line matching '$1' in $2}; it ends with:
$(tail -n 10 "$2" 2>&1)"
}

# expect_no_grep PATTERN FILE [WHY]: fails if FILE has a line matching PATTERN.
expect_no_grep() {
  [ -r "$2" ] || fail "cannot read $2"
  if grep -q -- "$1" "$2"; then
    fail "${3:-unexpected line matching '$1' in $2}: $(grep -m 3 -- "$1" "$2")"
  fi
}

# nb_wait_for SECONDS CMD [ARG...]: runs CMD every 0.1 s until it succeeds
# (returns 0) or SECONDS have passed (returns 1). For events: give deadlines
# generous enough for a sanitizer build on a busy machine; the wait ends as
# soon as the event happens.
nb_wait_for() {
  local end=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.1
  done
}

# nb_work_init NAME: makes $work, a fresh temporary directory, and $pids, an
# empty list; on exit every process in $pids that is still one of this
# script's running jobs is killed (never a pid already waited for, which
# may have been reused) and waited for, and $work is removed (kept when
# NB_KEEP is set, for a post-mortem).
nb_work_init() {
  work=$(mktemp -d -t "nb-$1.XXXXXX") || { echo "FAIL: mktemp"; exit 1; }
  pids=()
  trap nb_work_cleanup EXIT
}

nb_work_cleanup() {
  local p running
  running=" $(jobs -p | tr '\n' ' ') "
  for p in "${pids[@]+"${pids[@]}"}"; do
    case $running in *" $p "*) kill -9 "$p" 2>/dev/null || true ;; esac
  done
  wait 2>/dev/null || true
  if [ -n "${NB_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}

# nb_tail_logs N: the last N lines of every $work/*.log (for nb_on_fail).
nb_tail_logs() {
  local f
  for f in "$work"/*.log; do
    [ -f "$f" ] || continue
    echo "--- $f"
    tail -n "$1" "$f"
  done
}

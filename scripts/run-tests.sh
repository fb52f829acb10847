#!/usr/bin/env bash
# Runs every test given on the command line and prints one total.
#   cmocka binaries: their "[  PASSED  ] N test(s)" / "[  FAILED  ] N test(s)"
#                    lines are summed; a crash or non-zero exit without a
#                    FAILED line counts as one failure.
#   *.test.sh:       one test each; exit 0 passes, 77 is skipped, else fails.
# Each test runs with a time limit (NB_TEST_TIMEOUT seconds, default 600).
# Output of each test goes to $NB_BUILD/test-logs/; failures are printed.
set -u
build=${NB_BUILD:-build}
limit=${NB_TEST_TIMEOUT:-600}
logs="$build/test-logs"
mkdir -p "$logs"
passed=0 failed=0 skipped=0
failures=()
for t in "$@"; do
  name=${t#"$build"/}
  log="$logs/$(echo "$name" | tr '/' '_').log"
  start=$(date +%s.%N)
  case "$t" in
    *.test.sh) NB_BUILD="$build" timeout --kill-after=10 "$limit" bash "$t" >"$log" 2>&1; rc=$? ;;
    *)         timeout --kill-after=10 "$limit" "$t" >"$log" 2>&1; rc=$? ;;
  esac
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  case "$t" in
    *.test.sh)
      if [ $rc -eq 0 ]; then passed=$((passed+1)); st=ok
      elif [ $rc -eq 77 ]; then skipped=$((skipped+1)); st="skipped: $(tail -n1 "$log")"
      else failed=$((failed+1)); st="FAILED (exit $rc)"; failures+=("$name"); fi ;;
    *)
      p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
      f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
      k=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
      if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
      passed=$((passed+p)); failed=$((failed+f)); skipped=$((skipped+k))
      if [ "$f" -eq 0 ] && [ "$k" -gt 0 ]; then st="ok ($p), skipped $k: $(grep -m1 -i 'unavailable\|skip' "$log" | head -c 100)"
      elif [ "$f" -eq 0 ]; then st="ok ($p)"; else st="FAILED ($f of $((p+f)), exit $rc)"; failures+=("$name"); fi ;;
  esac
  printf '%-60s %s  [%ss]\n' "$name" "$st" "$secs"
done
for n in "${failures[@]+"${failures[@]}"}"; do
  log="$logs/$(echo "$n" | tr '/' '_').log"
  echo "==== $n (last 40 lines of $log)"
  tail -n 40 "$log"
done
echo
if [ $skipped -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ $failed -eq 0 ]

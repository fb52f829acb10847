#!/usr/bin/env bash
# The chaos test: a coordinator and three stage daemons (a chain, over TLS on
# loopback, lossless codecs, a checkpoint every few steps) train a small GPT
# while faults are injected at random moments:
#   kill -9 of a random stage daemon; kill -9 of the coordinator;
#   kill -STOP of a stage for longer than the heartbeat timeout, then -CONT;
#   kill -9 of a stage right after a checkpoint was asked for (during its write).
# Each daemon runs under a supervisor loop that restarts it 1 s after it dies,
# as systemd's Restart=on-failure would. Every step is followed by a held-out
# evaluation (job.eval), so faults land in evaluations too (one a fault ends
# is dropped, and the job recovers as usual). Pass condition: the job
# completes, its final weights equal, to the bit, those of nebula-train on
# the same job without any fault, and every held-out loss the coordinator
# logged equals nebula-train's after the same step; the faults, the
# recoveries, the steps redone and the evaluations dropped are printed.
# With CHAOS_NETNS=1 (root and network namespaces needed, else the test is
# skipped) stage c runs in a network namespace of its own, joined to the
# others' by a veth pair (scripts/wan-emu.sh), and one more kind of fault
# takes that link down for 5 s (longer than the heartbeat timeout) and up.
# Environment: CHAOS_STEPS (default 60), CHAOS_FAULTS (default 4), CHAOS_SEED
# (default: random, printed), CHAOS_EVERY (checkpoint every N steps, default 7),
# CHAOS_NETNS (default 0).
# The long version (docs/operations.md) is scripts/chaos.sh, which runs this
# with a few hundred steps and ten or more faults.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
steps=${CHAOS_STEPS:-60}
nfaults=${CHAOS_FAULTS:-4}
every=${CHAOS_EVERY:-7}
seed=${CHAOS_SEED:-$(( (RANDOM << 15) | RANDOM ))}
RANDOM=$seed
echo "# chaos: $steps steps, $nfaults faults, checkpoint every $every steps, seed $seed"
nb_work_init pipe-chaos
# the daemons run under supervisor loops: stop those and kill what they run
chaos_kill() {
  touch "$work/run/stop" 2>/dev/null || true
  local f
  for f in "$work"/run/*.pid; do
    [ -e "$f" ] || continue
    kill -CONT "$(cat "$f")" 2>/dev/null || true
    kill -9 "$(cat "$f")" 2>/dev/null || true
  done
}
trap 'chaos_kill; nb_work_cleanup' EXIT
nb_on_fail() { nb_tail_logs 25; echo "# seed $seed"; }
netns=${CHAOS_NETNS:-0}
ns=nbch$(( $$ % 10000 ))  # unique per run: concurrent runs must not share namespaces
host_ab=127.0.0.1 host_c=127.0.0.1
if [ "$netns" = 1 ]; then
  [ "$(id -u)" = 0 ] || nb_skip "CHAOS_NETNS=1 needs root"
  rc=0; scripts/wan-emu.sh up "$ns" 1000 >/dev/null 2>&1 || rc=$?
  [ $rc -eq 0 ] || nb_skip "network namespaces unavailable ($rc)"
  trap 'chaos_kill; nb_work_cleanup; scripts/wan-emu.sh down "$ns" >/dev/null 2>&1 || true' EXIT
  host_ab=10.77.0.1 host_c=10.77.0.2
fi
# ns_prefix NAME: sets $nsx to the command prefix that runs daemon NAME in
# its namespace (ip netns exec replaces itself with the daemon: $! stays
# the daemon's pid); empty without namespaces
ns_prefix() {
  nsx=()
  if [ "$netns" = 1 ]; then
    if [ "$1" = c ]; then nsx=(ip netns exec "$ns-b"); else nsx=(ip netns exec "$ns-a"); fi
  fi
}
nb_pipe_prepare "$work" "$bin" || exit 1
bash scripts/gen-certs.sh "$work/certs" c >/dev/null
base=$(nb_port_base 40)
cp=$base ap=$((base + 1)) bp=$((base + 2)) ccp=$((base + 3))

model="{n_layer: 6, d_model: 64, n_head: 4, d_ff: 256, vocab: 256, max_seq: 32, tie_embeddings: false}"
job_section() {
  cat <<YAML
job:
  model: $model
  seed: 5
  data: data.tok
  batch: 8
  seq_len: 32
  steps: $steps
  micro_batches: 4
  schedule: 1f1b
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 3, grad_clip: 1.0}
  codecs: {forward: fp32, backward: fp32}
  planner: {enabled: false}
  log_every: 1
  eval: {fraction: 0.05, every_steps: 1, batches: 1}
YAML
}
mkdir -p "$work/run"
{
  echo "name: coord"; echo "role: coordinator"; echo "listen: $host_ab:$cp"
  echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
  echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 0.2"; echo "heartbeat_timeout_s: 2"
  echo "connect_timeout_s: 20"; echo "checkpoint_dir: run/coord-ckpt"
  job_section
  echo "  checkpoint: {every_steps: $every, keep: 2}"
  echo "  recovery_timeout_s: 120"
  echo "  clusters:"
  echo "    - {name: a, address: $host_ab:$ap}"
  echo "    - {name: b, address: $host_ab:$bp}"
  echo "    - {name: c, address: $host_c:$ccp}"
} > "$work/coord.yaml"
for n in a b c; do
  case $n in a) p=$ap ;; b) p=$bp ;; c) p=$ccp ;; esac
  h=$host_ab; [ $n = c ] && h=$host_c
  nb_stage_yaml "$work/$n.yaml" $n "$h:$p" "$host_ab:$cp" 0.2 2 "checkpoint_dir: run/$n-ckpt"
done
{ echo "name: ref"; echo "role: train"; job_section; echo "  output: run/ref.weights"; } > "$work/ref.yaml"
"$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref.log" 2>&1 || fail "nebula-train"

# supervise NAME: runs nebulad NAME until it exits 0, restarting it 1 s after
# any other end (Restart=on-failure, RestartSec=1); its pid is in run/NAME.pid
supervise() {
  local n=$1
  while :; do
    delay=0
    if [ "$n" = c ] && [ ! -e "$work/run/c.nodelay" ]; then delay=3; fi
    ns_prefix $n
    NEBULA_TEST_FINAL_DELAY_S=$delay "${nsx[@]}" "$bin/nebulad" --config "$work/$n.yaml" >> "$work/$n.log" 2>&1 &
    echo $! > "$work/run/$n.pid"
    if wait $!; then break; fi
    if [ -e "$work/run/stop" ]; then break; fi
    echo "restart $(date +%s.%N)" >> "$work/run/$n.restarts"
    sleep 1
  done
}
pids=()
for n in coord a b c; do supervise $n & pids+=($!); done
pid_of() { cat "$work/run/$1.pid"; }

nb_wait_for 120 grep -qs "step 1/" "$work/coord.log" || fail "the job did not start within 120 s"
done_yet() { grep -q "job done" "$work/coord.log"; }
# the step the job has reached, as the coordinator logs it
at_step() { grep -o "step [0-9]*/$steps" "$work/coord.log" | tail -n 1 | grep -o "[0-9]*" | head -n 1; }
reached() {
  ! grep -q "job failed" "$work/coord.log" || fail "the job failed: $(grep -m 1 -o 'job failed.*' "$work/coord.log")"
  done_yet || [ "$(at_step)" -ge "$1" ]
}
# the faults land at random steps, in order, each once the job runs again
targets=$(for i in $(seq 1 "$nfaults"); do echo $(( 3 + RANDOM % (steps - 6) )); done | sort -n)
faults=()
i=0
for t in $targets; do
  i=$((i + 1))
  nb_wait_for 300 reached "$t" || fail "the job did not reach step $t within 300 s"
  if done_yet; then break; fi
  kind=$(( RANDOM % (netns == 1 ? 5 : 4) ))
  victim=$(printf 'a\nb\nc\n' | sed -n "$(( RANDOM % 3 + 1 ))p")
  case $kind in
    0) kill -9 "$(pid_of $victim)" 2>/dev/null || true; f="kill -9 stage $victim" ;;
    1) kill -9 "$(pid_of coord)" 2>/dev/null || true; f="kill -9 coordinator" ;;
    2) kill -STOP "$(pid_of $victim)" 2>/dev/null || true; sleep 3.5
       kill -CONT "$(pid_of $victim)" 2>/dev/null || true; f="kill -STOP stage $victim for 3.5 s" ;;
    4) ip -n "$ns-a" link set dev "v$ns-a" down; sleep 5; ip -n "$ns-a" link set dev "v$ns-a" up
       f="the link to stage c down for 5 s" ;;
    3) n0=$(grep -c "checkpoint at step .*: asking" "$work/coord.log" || true)
       nb_wait_for 60 bash -c "[ \$(grep -c 'checkpoint at step .*: asking' '$work/coord.log') -gt $n0 ]" || true
       kill -9 "$(pid_of $victim)" 2>/dev/null || true; f="kill -9 stage $victim during a checkpoint" ;;
  esac
  faults+=("$f")
  echo "# fault $i at step $(at_step): $f"
  sleep 1.2 # the supervisor restarts what died after 1 s
done

# one more at the very end: stage c writes its final weights 3 s late
# (NEBULA_TEST_FINAL_DELAY_S); once the last step is logged it is killed,
# while a and b are done: the job recovers (they answer, and write their
# weights again) and finishes again
nb_wait_for 300 reached "$steps" || fail "the job did not reach its last step within 300 s"
if ! done_yet; then
  touch "$work/run/c.nodelay"
  kill -9 "$(pid_of c)" 2>/dev/null || true
  faults+=("kill -9 stage c after the last step")
  echo "# fault $((i + 1)) at step $(at_step): kill -9 stage c after the last step, before its final weights"
fi

nb_wait_for 600 reached 999999999 || fail "no 'job done' within 600 s"
touch "$work/run/stop"
for n in coord a b c; do "$bin/nebulactl" --socket "$work/run/$n.sock" stop >/dev/null 2>&1 || true; done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()
recoveries=$(grep -c "recovered in" "$work/coord.log" || true)
redone=$({ grep -o "([0-9]* steps\? to run again)" "$work/coord.log" || true; } | { grep -o "[0-9]*" || true; } |
  awk '{s += $1} END {print s + 0}')
dropped=$(grep -c "evaluation after step .* dropped" "$work/coord.log" || true)
echo "# faults: ${#faults[@]}, recoveries logged: $recoveries, steps run again: ${redone:-0}, evaluations dropped: $dropped"
{ grep -h "recovered in\|resuming .* at step\|resuming job" "$work/coord.log" || true; } | sed 's/^/#   /' | head -n 40
"$bin/nebula-weights" compare --tol 0 "$work/run/ref.weights" "$work"/run/*-ckpt/final-stage*.weights \
  > "$work/compare.log" 2>&1 || { cat "$work/compare.log"; fail "final weights differ from the uninterrupted run"; }
tail -n 1 "$work/compare.log"
# every held-out loss logged equals nebula-train's after that step (a step
# run again after a recovery logs it again: the same number)
sed -n "s/^step *\([0-9]*\)\/$steps .*val_loss \([0-9.]*\)\$/\1 \2/p" "$work/ref.log" > "$work/ref-val.txt"
sed -n "s/.* step \([0-9]*\)\/$steps .* val_loss \([0-9.]*\)\$/\1 \2/p" "$work/coord.log" | sort -u > "$work/coord-val.txt"
sort "$work/ref-val.txt" -o "$work/ref-val.txt" # join wants both sorted as text
[ "$(wc -l < "$work/ref-val.txt")" -eq "$steps" ] || fail "nebula-train did not log $steps held-out losses"
[ -s "$work/coord-val.txt" ] || fail "the coordinator logged no held-out loss"
join "$work/coord-val.txt" "$work/ref-val.txt" | awk '$2 != $3 { print; bad = 1 } END { exit bad }' ||
  fail "held-out losses differ from nebula-train's (step, pipeline, nebula-train) above"
[ "$(cut -d' ' -f1 "$work/coord-val.txt" | uniq -d | wc -l)" -eq 0 ] ||
  fail "a step logged two different held-out losses: $(cut -d' ' -f1 "$work/coord-val.txt" | uniq -d | tr '\n' ' ')"
echo "# held-out losses logged for $(wc -l < "$work/coord-val.txt") of $steps steps, all equal to nebula-train's"
echo "ok chaos: ${#faults[@]} faults, final weights equal to the uninterrupted run"

#!/usr/bin/env bash
# checkpoint_recovery.bench.sh - what fault tolerance costs, on loopback.
# A coordinator and two stage daemons train a GPT (4 blocks, d_model 192,
# batch 8 x 64 tokens, m=4, 1F1B; 1.9 M parameters, so each checkpoint is
# 23 MB of weights and AdamW moments). Printed, all from this run:
#   bench checkpoint_overhead_fraction   (mean step time with a checkpoint
#                                         every N steps - without) / without:
#                                         the two jobs run alternately, rounds
#                                         times each (steps 6..end of each);
#                                         the median of the rounds' ratios
#   bench checkpoint_seconds             the coordinator's time from asking
#                                         for a checkpoint to its manifest
#   bench recovery_seconds               kill -9 of stage b, restarted 1 s
#                                         later (systemd's RestartSec=1), to
#                                         the first step completed after it
# NB_CKPT_EVERY (default 10), NB_CKPT_STEPS (default 60), NB_CKPT_ROUNDS
# (default 5).
set -u
build=${NB_BUILD:-build}
bin="$build/bin"
every=${NB_CKPT_EVERY:-10}
steps=${NB_CKPT_STEPS:-60}
rounds=${NB_CKPT_ROUNDS:-5}
export OPENBLAS_NUM_THREADS=1
[ -x "$bin/nebulad" ] || { echo "no $bin/nebulad (run make first)"; exit 1; }
. tests/support/pipeline.sh
work=$(mktemp -d /tmp/nb-ckpt-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(( 48000 + ($$ % 500) * 3 ))
cp=$base ap=$((base + 1)) bp=$((base + 2))

configs() { # $1 every_steps (0: none), $2 steps
  {
    echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$cp"
    echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
    echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 0.2"; echo "heartbeat_timeout_s: 3"
    echo "connect_timeout_s: 60"; echo "checkpoint_dir: run/coord-ckpt"
    cat <<YAML
job:
  model: {n_layer: 4, d_model: 192, n_head: 4, vocab: 256, max_seq: 64, tie_embeddings: false}
  seed: 3
  data: data.tok
  batch: 8
  seq_len: 64
  steps: $2
  micro_batches: 4
  schedule: 1f1b
  codecs: {forward: fp32, backward: fp32}
  planner: {enabled: false}
  log_every: 1
  checkpoint: {every_steps: $1, keep: 2}
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
    - {name: b, address: 127.0.0.1:$bp}
YAML
  } > "$work/coord.yaml"
  for n in a b; do
    local p=$ap; [ $n = b ] && p=$bp
    nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 0.2 3 "checkpoint_dir: run/$n-ckpt"
  done
  rm -rf "$work/run"; mkdir -p "$work/run"
}

wait_log() { # $1 file, $2 pattern, $3 seconds
  local i
  for i in $(seq 1 $(( $3 * 10 ))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    grep -q "job failed" "$1" 2>/dev/null && return 1
    sleep 0.1
  done
  return 1
}

stop_all() {
  for n in coord a b; do "$bin/nebulactl" --socket "$work/run/$n.sock" stop >/dev/null 2>&1 || true; done
  for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# mean step time (s) of steps 6..end from a coordinator log
mean_step() {
  sed -n 's/.* step \([0-9]*\)\/[0-9]* loss .* step \([0-9.]*\) s.*/\1 \2/p' "$1" |
    awk '$1 > 5 { s += $2; n++ } END { if (n) printf "%.6f", s / n; else print "nan" }'
}

run_job() { # $1 every_steps; prints the mean step time
  configs "$1" "$steps"
  "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & pids+=($!)
  wait_log "$work/coord.log" "job done" 600 || { echo "job (every $1) did not finish" >&2; tail "$work/coord.log" >&2; exit 1; }
  stop_all
  mean_step "$work/coord.log"
  if [ "$1" -gt 0 ]; then
    sed -n 's/.*checkpoint at step [0-9]* complete: .*(\([0-9.]*\) s)$/\1/p' "$work/coord.log" >> "$work/ckpt_s.txt"
  fi
}

: > "$work/ckpt_s.txt"
: > "$work/ratios.txt"
for r in $(seq 1 "$rounds"); do
  off=$(run_job 0); on=$(run_job "$every")
  echo "round $r: mean step ${off} s without checkpoints, ${on} s with one every $every steps"
  awk -v a="$off" -v b="$on" 'BEGIN { print (b - a) / a }' >> "$work/ratios.txt"
done
sort -g "$work/ratios.txt" | awk -v e="$every" '{ v[NR] = $1 } END {
  m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf "bench checkpoint_overhead_fraction %.4f ratio (every %d steps; median of %d rounds, from %.4f to %.4f)\n", m, e, NR, v[1], v[NR] }'
awk '{ s += $1; n++ } END { if (n) printf "bench checkpoint_seconds %.3f s (mean of %d)\n", s / n, n }' "$work/ckpt_s.txt"

# recovery: kill -9 of stage b mid-job, restarted 1 s later
configs "$every" 100000
"$bin/nebulad" --config "$work/coord.yaml" > "$work/coord.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & b=$!; pids+=($b)
wait_log "$work/coord.log" "checkpoint at step $(( 2 * every )) complete" 600 || { echo "no checkpoint"; exit 1; }
t_kill=$(date +%s.%N)
kill -9 "$b"
wait "$b" 2>/dev/null
sleep 1
"$bin/nebulad" --config "$work/b.yaml" >> "$work/b.log" 2>&1 & pids+=($!)
wait_log "$work/coord.log" "recovered in" 600 || { echo "no recovery"; tail "$work/coord.log"; exit 1; }
# the first step line after the recovery line, by its timestamp
first=$(awk '/recovered in/ { r = 1; next } r && / step [0-9]*\/[0-9]* loss/ { print $1; exit }' "$work/coord.log")
for i in $(seq 1 600); do
  [ -n "$first" ] && break
  sleep 0.1
  first=$(awk '/recovered in/ { r = 1; next } r && / step [0-9]*\/[0-9]* loss/ { print $1; exit }' "$work/coord.log")
done
[ -n "$first" ] || { echo "no step after the recovery"; exit 1; }
t_first=$(date -d "$first" +%s.%N)
grep -h "fault in attempt\|resuming\|recovered in" "$work/coord.log"
awk -v a="$t_kill" -v b="$t_first" 'BEGIN { printf "bench recovery_seconds %.2f s (kill -9 of a stage, restart after 1 s)\n", b - a }'
stop_all

#!/usr/bin/env bash
# repartition.bench.sh - what re-partitioning a running job gains when its
# two stage daemons run at very different speeds. Stage daemon a is pinned
# with taskset to CPU 0 and shares it with a busy loop (so it gets about
# half a core); stage daemon b has CPU 1 to itself (the coordinator too: it
# only plans and commits). No cgroup CPU limit is used: cgroups are not
# writable in every container this runs in, taskset is. The model: a GPT of
# 12 blocks, d_model 64, d_ff 256, batch 8 x 32 tokens, m=4, 1F1B, fp32,
# OPENBLAS_NUM_THREADS=1. Both jobs start on the even split (6,6):
#   even      job.planner.repartition off: 6,6 throughout
#   repart    job.planner.repartition on (min_gain 0.1, replan_steps 3): the
#             planner measures the stages and moves the split through a
#             checkpoint (one checkpoint_dir shared by both daemons)
# The jobs run alternately, NB_REPART_ROUNDS times each. Printed:
#   bench repartition_vs_even_split     median over the rounds of (mean step
#                                       time of even, steps 6..end) / (mean
#                                       step time of repart after its last
#                                       move): the re-split's speed-up
#   bench repartition_job_vs_even_split the same for the whole jobs' wall
#                                       time from step 1 to the end, the
#                                       move's checkpoint and restart included
#   bench repartition_move_seconds      the coordinator's time from the
#                                       move's checkpoint request to the
#                                       links up on the new split (median)
# and, as "# " lines, the split each round moved to.
# NB_REPART_STEPS (default 60), NB_REPART_ROUNDS (default 3).
set -u
build=${NB_BUILD:-build}
bin="$build/bin"
steps=${NB_REPART_STEPS:-60}
rounds=${NB_REPART_ROUNDS:-3}
export OPENBLAS_NUM_THREADS=1
[ -x "$bin/nebulad" ] || { echo "no $bin/nebulad (run make first)"; exit 1; }
command -v taskset >/dev/null || { echo "skipped: no taskset"; exit 77; }
[ "$(nproc)" -ge 2 ] || { echo "skipped: needs 2 CPUs (one shared with a busy loop, one not)"; exit 77; }
. tests/support/pipeline.sh
work=$(mktemp -d -t nb-repart-bench.XXXXXX)
pids=()
hog=
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}" $hog; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 10)
cp=$base ap=$((base + 1)) bp=$((base + 2))

configs() { # $1: true/false (repartition)
  {
    echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$cp"
    echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
    echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 0.5"; echo "heartbeat_timeout_s: 10"
    echo "connect_timeout_s: 60"; echo "checkpoint_dir: run/coord-ckpt"
    cat <<YAML
job:
  model: {n_layer: 12, d_model: 64, n_head: 4, d_ff: 256, vocab: 256, max_seq: 32, tie_embeddings: false}
  seed: 3
  data: data.tok
  batch: 8
  seq_len: 32
  steps: $steps
  micro_batches: 4
  schedule: 1f1b
  optimizer: {lr: 1e-3, warmup_steps: 5}
  codecs: {forward: fp32, backward: fp32}
  planner: {enabled: true, repartition: $1, repartition_min_gain: 0.1, replan_steps: 3}
  checkpoint: {every_steps: 100000, keep: 2}
  log_every: 1
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
    - {name: b, address: 127.0.0.1:$bp}
YAML
  } > "$work/coord.yaml"
  nb_stage_yaml "$work/a.yaml" a "127.0.0.1:$ap" "127.0.0.1:$cp" 0.5 10 "checkpoint_dir: run/shared-ckpt"
  nb_stage_yaml "$work/b.yaml" b "127.0.0.1:$bp" "127.0.0.1:$cp" 0.5 10 "checkpoint_dir: run/shared-ckpt"
}

# run_job NAME REPARTITION: prints "mean_steady mean_all move_s split"
run_job() {
  local name=$1 rp=$2
  rm -rf "$work/run"; mkdir -p "$work/run"
  configs "$rp"
  : > "$work/coord.log"
  taskset -c 1 "$bin/nebulad" --config "$work/coord.yaml" >> "$work/coord.log" 2>&1 & pids+=($!)
  taskset -c 0 "$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & pids+=($!)
  taskset -c 1 "$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & pids+=($!)
  local t=0
  until grep -q "job done\|job failed" "$work/coord.log"; do
    sleep 0.2; t=$((t + 1))
    [ $t -lt 3000 ] || { echo "# $name: no end within 600 s" >&2; break; }
  done
  for n in coord a b; do "$bin/nebulactl" --socket "$work/run/$n.sock" stop >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
  cp "$work/coord.log" "$work/coord-$name.log"
  grep -o "re-partition after step [0-9]*: split .*faster\|planner: split .* measured .* the split it left.*" "$work/coord.log" | sed "s/^/# $name: /" >&2
  if grep -q "job failed" "$work/coord.log"; then
    echo "# $name: $(grep -m 1 -o 'job failed.*' "$work/coord.log")" >&2
    echo "0 0 0 -"
    return
  fi
  # the step lines after the last move (or from step 6) and the whole job
  awk -v steps="$steps" '
    / re-partitioned in / { after = 1; n = 0; sum = 0; mv = $0; sub(/.*re-partitioned in /, "", mv); sub(/ s .*/, "", mv);
                            split_ = $0; sub(/.*split /, "", split_); sub(/;.*/, "", split_) }
    / step [0-9]+\/[0-9]+ loss / {
      for (i = 1; i <= NF; i++) if ($i == "step" && $(i + 1) ~ /^[0-9]+\/[0-9]+$/) { s = $(i + 1); sub(/\/.*/, "", s) }
      for (i = NF; i > 0; i--) if ($i == "s" && $(i - 1) ~ /^[0-9.]+$/ && $(i - 2) == "step") { t = $(i - 1); break }
      all += t; na++
      if ((after && n_skip++ >= 1) || (!after && s + 0 >= 6)) { sum += t; n++ }
    }
    END { printf "%.5f %.5f %s %s\n", n ? sum / n : 0, na ? all / na : 0, mv ? mv : 0, split_ ? split_ : "6,6" }
  ' "$work/coord.log"
}

taskset -c 0 bash -c 'while :; do :; done' & hog=$!
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (other processes share both CPUs)"
even_steady=() rep_steady=() even_all=() rep_all=() moves=()
for r in $(seq 1 "$rounds"); do
  read -r es ea _ _ <<<"$(run_job even-$r false)"
  read -r rs ra mv sp <<<"$(run_job repart-$r true)"
  echo "# round $r: even ${es}s per step (${ea}s whole job), re-partitioned to $sp: ${rs}s per step after the move (${ra}s whole job), move ${mv}s"
  even_steady+=("$es"); rep_steady+=("$rs"); even_all+=("$ea"); rep_all+=("$ra"); moves+=("$mv")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratios=() jratios=()
for i in "${!even_steady[@]}"; do
  ratios+=("$(awk -v a="${even_steady[$i]}" -v b="${rep_steady[$i]}" 'BEGIN {printf "%.3f", (b > 0) ? a / b : 0}')")
  jratios+=("$(awk -v a="${even_all[$i]}" -v b="${rep_all[$i]}" 'BEGIN {printf "%.3f", (b > 0) ? a / b : 0}')")
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench repartition_vs_even_split $(median "${ratios[@]}") x"
echo "bench repartition_job_vs_even_split $(median "${jratios[@]}") x"
echo "bench repartition_move_seconds $(median "${moves[@]}") s"

#!/usr/bin/env bash
# pipeline_wan.bench.sh - the main job across an emulated WAN link.
# A coordinator and two stage daemons train the same GPT (4 blocks, d_model
# 256, batch 16 x 64 tokens, m=4, 1F1B) once on loopback ("single cloud") and
# once with the stages in two network namespaces joined by a tbf-shaped link
# (scripts/wan-emu.sh), for each codec setting. Printed, all from this run:
#   bench pipe_<codec>_tps_lo                  tokens/s unshaped (median of steps 4..N)
#   bench pipe_<codec>_tps_wan_<R>mbit         tokens/s through a R Mbit/s link
#   bench pipe_<codec>_wan_<R>mbit_vs_lo       shaped / unshaped throughput
#   bench pipe_<codec>_step_vs_fp32_<R>mbit    step time / fp32's step time, same link
#   bench pipe_<codec>_loss_gap                final loss vs fp32, relative
# at two rates: 100 Mbit/s (a good WAN link: the throughput ratio) and
# 10 Mbit/s (a poor one, where the link sets the pace: the codec speed-ups).
# and the memory of each stage of a larger model (8 blocks, d_model 512):
#   bench pipe_mem_<stage>_rss_vs_model    peak RSS / (weights + grads +
#                                          AdamW state + stashed activations)
# Needs root (namespaces); exit 77 otherwise. NB_WAN_RATES (default "100 10").
set -u
build=${NB_BUILD:-build}
bin="$build/bin"
rates=${NB_WAN_RATES:-100 10}
steps=${NB_PIPE_STEPS:-12}
rounds=${NB_PIPE_ROUNDS:-3}
# One BLAS thread per daemon: on a small machine the stage daemons would
# otherwise fight over the same cores; each stage gets one, as one cluster.
export OPENBLAS_NUM_THREADS=1
[ -x "$bin/nebulad" ] || { echo "no $bin/nebulad (run make first)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "pipeline_wan: needs root for network namespaces"; exit 77; }
command -v tc >/dev/null || { echo "pipeline_wan: no tc"; exit 77; }
ns=pipe$(( $$ % 10000 ))  # unique per run: concurrent runs must not share namespaces
. tests/support/wan.sh
nb_wan_work_init nb-pipe-bench "$ns"
. tests/support/pipeline.sh
nb_pipe_prepare "$work" "$bin" || exit 1

# run_job MODE(lo|wan) FWD BWD MODEL_YAML STEPS -> writes $work/coord.log
run_job() {
  local mode=$1 fwd=$2 bwd=$3 model=$4 n=$5
  local ha=127.0.0.1 hb=127.0.0.1 ea="" eb=""
  if [ "$mode" = wan ]; then
    ha=10.77.0.1 hb=10.77.0.2 ea="ip netns exec $ns-a" eb="ip netns exec $ns-b"
  fi
  rm -rf "$work/run"; mkdir -p "$work/run"
  cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: $ha:7500
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 1
heartbeat_timeout_s: 30
connect_timeout_s: 30
job:
  model: $model
  data: data.tok
  batch: 16
  seq_len: 64
  steps: $n
  micro_batches: 4
  schedule: 1f1b
  optimizer: {lr: 1e-3, min_lr: 1e-4, warmup_steps: 2}
  codecs: {forward: "$fwd", backward: "$bwd"}
  clusters:
    - {name: a, address: "$ha:7501"}
    - {name: b, address: "$hb:7502"}
YAML
  for s in a b; do
    local h=$ha p=7501; [ $s = b ] && h=$hb p=7502
    nb_stage_yaml "$work/$s.yaml" $s "$h:$p" "$ha:7500" 1 30
  done
  pids=()
  $ea "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord.log" 2>&1 & pids+=($!)
  $ea "$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & pids+=($!)
  $eb "$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & pids+=($!)
  local ok=1
  for _ in $(seq 1 1200); do
    grep -q "job done" "$work/coord.log" && { ok=0; break; }
    grep -q "job failed" "$work/coord.log" && break
    sleep 0.2
  done
  if [ $ok -ne 0 ]; then echo "# $mode $fwd/$bwd: job did not finish"; tail -n 5 "$work"/*.log; fi
  "$bin/nebulactl" --socket "$work/run/a.sock" metrics > "$work/metrics-a.txt" 2>/dev/null
  "$bin/nebulactl" --socket "$work/run/b.sock" metrics > "$work/metrics-b.txt" 2>/dev/null
  for s in coord a b; do "$bin/nebulactl" --socket "$work/run/$s.sock" stop >/dev/null 2>&1; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
  return $ok
}

steady_tps() { # median tokens/s of steps 4..N (robust to a noisy shared machine)
  sed -n 's/.* step \([0-9]*\)\/[0-9]* loss [0-9.]* tokens\/s \([0-9]*\) .*/\1 \2/p' "$work/coord.log" |
    awk '$1 > 3 { print $2 }' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'
}
final_loss() { sed -n 's/.*final loss \([0-9.]*\),.*/\1/p' "$work/coord.log" | tail -n 1; }
metric() { awk -v k="$2" '$1 == k { print $2 }' "$work/metrics-$1.txt"; }

small='{n_layer: 4, d_model: 256, n_head: 8, vocab: 256, max_seq: 64, tie_embeddings: false}'
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }

# Each figure is the median over $rounds rounds, and within a round the
# unshaped and shaped runs of a codec follow each other, so a busy spell on a
# shared machine hits both sides of a ratio.
declare -A fp32_tps
fp32_loss=0
for c in "fp32 fp32" "fp16 fp16" "int8 int8" "fp16(svd(0.6)) int8" "fp16(svd(0.2)) int8"; do
  set -- $c
  fwd=$1 bwd=$2
  name=$(echo "${fwd}_$bwd" | tr -c 'a-z0-9_\n' '_' | sed 's/__*/_/g; s/_$//')
  declare -A got=()
  for r in $(seq 1 "$rounds"); do
    run_job lo "$fwd" "$bwd" "$small" "$steps" || continue
    got[lo]+="$(steady_tps) "; loss=$(final_loss)
    for rate in $rates; do
      scripts/wan-emu.sh up "$ns" "$rate" || exit $?
      run_job wan "$fwd" "$bwd" "$small" "$steps" || continue
      got[$rate]+="$(steady_tps) "
      [ "$r" = 1 ] && grep -m1 "job done" "$work/coord.log" | sed "s/^.*job done/# $rate Mbit\/s $fwd\/$bwd: job done/"
    done
  done
  lo=$(echo ${got[lo]} | tr ' ' '\n' | median)
  [ "$fwd" = fp32 ] && fp32_loss=$loss
  echo "bench pipe_${name}_tps_lo $lo tokens/s"
  awk -v a="$loss" -v b="$fp32_loss" -v n="$name" 'BEGIN { printf "bench pipe_%s_loss_gap %.4f rel\n", n, (a - b) / b }'
  for rate in $rates; do
    wan=$(echo ${got[$rate]} | tr ' ' '\n' | median)
    [ "$fwd" = fp32 ] && fp32_tps[$rate]=$wan
    echo "bench pipe_${name}_tps_wan_${rate}mbit $wan tokens/s"
    awk -v a="$wan" -v b="$lo" -v n="$name" -v r="$rate" 'BEGIN { printf "bench pipe_%s_wan_%smbit_vs_lo %.3f ratio\n", n, r, a / b }'
    awk -v a="$wan" -v b="${fp32_tps[$rate]}" -v n="$name" -v r="$rate" 'BEGIN { printf "bench pipe_%s_step_vs_fp32_%smbit %.3f ratio\n", n, r, b / a }'
  done
  unset got
done
scripts/wan-emu.sh down "$ns" >/dev/null 2>&1

# memory: a model whose state dwarfs the process's fixed cost
big='{n_layer: 8, d_model: 512, n_head: 8, vocab: 256, max_seq: 64, tie_embeddings: false}'
if run_job lo fp32 fp32 "$big" 3; then
  for s in a b; do
    model=$(metric $s nebula_stage_model_bytes); rss=$(metric $s nebula_stage_peak_rss_bytes)
    awk -v m="$model" -v r="$rss" -v s="$s" 'BEGIN {
      printf "# stage %s: model state %.1f MiB, peak RSS %.1f MiB\n", s, m / 1048576, r / 1048576
      printf "bench pipe_mem_stage_%s_rss_vs_model %.3f ratio\n", s, r / m }'
  done
fi

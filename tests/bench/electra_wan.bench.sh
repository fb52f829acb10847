#!/usr/bin/env bash
# electra_wan.bench.sh - multi-generator ELECTRA across daemons over an
# emulated WAN link (docs/electra.md, "Across daemons"). The discriminator's
# daemon runs in one network namespace, the generator daemons in another,
# joined by a tbf-shaped link (scripts/wan-emu.sh); the job is the demo's
# (config/electra/discriminator.yaml: a 2-layer d_model-64 discriminator,
# 1-layer d_model-16 generators, 8 sequences of 64 byte tokens from each
# generator per step), on the GPL-3, Apache-2.0 and MPL-2.0 texts.
# Printed, all from this run (discriminator tokens/s after step 1, median of
# NB_ELECTRA_ROUNDS rounds; the shaped and unshaped runs of a round follow
# each other, so a busy spell on a shared machine hits both sides of a ratio):
#   bench electra_tps_lo_<G>gen                   unshaped (loopback), G = 1, 2, 3 generators
#   bench electra_tps_vs_1gen_<G>gen              G generators / 1 generator, unshaped
#   bench electra_tps_wan_<R>mbit                 2 generators through a R Mbit/s link
#   bench electra_shaped_vs_unshaped_<R>mbit      shaped / unshaped, 2 generators
#   bench electra_wire_bytes_per_token            encoded batch bytes per discriminator token
#   bench electra_link_mbit_at_lo                 the link load the unshaped run would put on it
# Needs root (namespaces) and tc; exit 77 otherwise. NB_WAN_RATES (default
# "100 10"), NB_ELECTRA_STEPS (default 40), NB_ELECTRA_ROUNDS (default 3).
set -u
build=${NB_BUILD:-build}
bin="$build/bin"
rates=${NB_WAN_RATES:-100 10}
steps=${NB_ELECTRA_STEPS:-40}
rounds=${NB_ELECTRA_ROUNDS:-3}
# One BLAS thread per daemon: each daemon stands for one cluster.
export OPENBLAS_NUM_THREADS=1
[ -x "$bin/nebulad" ] || { echo "no $bin/nebulad (run make first)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "electra_wan: needs root for network namespaces"; exit 77; }
command -v tc >/dev/null || { echo "electra_wan: no tc"; exit 77; }
ns=elec
. tests/support/wan.sh
nb_wan_work_init nb-electra-bench "$ns"
bash scripts/gen-certs.sh "$work/certs" disc g0 g1 g2 >/dev/null || exit 1
i=0
for text in GPL-3 Apache-2.0 MPL-2.0; do
  "$bin/nebula-tokenize" "/usr/share/common-licenses/$text" "$work/g$i.tok" >/dev/null || exit 1
  i=$((i + 1))
done

gen_model='{n_layer: 1, d_model: 16, n_head: 2, vocab: 257, max_seq: 64, causal: false, head: mlm}'
# run_job MODE(lo|wan) G -> $work/disc.log; 0 when the job finished
run_job() {
  local mode=$1 g=$2 hd=127.0.0.1 hg=127.0.0.1 ed="" eg="" i
  if [ "$mode" = wan ]; then
    hd=10.77.0.1 hg=10.77.0.2 ed="ip netns exec $ns-a" eg="ip netns exec $ns-b"
  fi
  rm -rf "$work/run"; mkdir -p "$work/run"
  {
    cat <<YAML
name: disc
role: coordinator
listen: $hd:7520
tls: {cert: certs/disc.pem, key: certs/disc.key, ca: certs/ca.pem}
status_socket: run/disc.sock
heartbeat_interval_s: 1
heartbeat_timeout_s: 30
connect_timeout_s: 60
job:
  model: {n_layer: 2, d_model: 64, n_head: 4, vocab: 257, max_seq: 64, causal: false, head: tokcls, n_classes: 2,
          token_shift: true}
  seed: 1337
  batch: $((8 * g))
  seq_len: 64
  steps: $steps
  optimizer: {lr: 1e-3, min_lr: 1e-4, warmup_steps: 10, grad_clip: 1.0}
  log_every: 10
  electra:
    generators:
YAML
    for i in $(seq 0 $((g - 1))); do
      echo "      - {name: g$i, sequences: 8, model: $gen_model, optimizer: {lr: 2e-3, min_lr: 2e-4, warmup_steps: 10}}"
    done
  } > "$work/disc.yaml"
  pids=()
  $ed "$bin/nebulad" --config "$work/disc.yaml" > "$work/disc.log" 2>&1 & pids+=($!)
  for i in $(seq 0 $((g - 1))); do
    cat > "$work/g$i.yaml" <<YAML
name: g$i
role: stage
electra_generator: true
listen: $hg:$((7521 + i))
tls: {cert: certs/g$i.pem, key: certs/g$i.key, ca: certs/ca.pem}
coordinator: {address: "$hd:7520", name: disc}
data: g$i.tok
status_socket: run/g$i.sock
heartbeat_interval_s: 1
heartbeat_timeout_s: 30
YAML
    $eg "$bin/nebulad" --config "$work/g$i.yaml" > "$work/g$i.log" 2>&1 & pids+=($!)
  done
  local ok=1
  for _ in $(seq 1 1500); do
    grep -q "job done" "$work/disc.log" && { ok=0; break; }
    grep -q "job failed" "$work/disc.log" && break
    sleep 0.2
  done
  if [ $ok -ne 0 ]; then echo "# $mode $g generators: job did not finish"; tail -n 5 "$work"/*.log; fi
  for s in "$work"/run/*.sock; do "$bin/nebulactl" --socket "$s" stop >/dev/null 2>&1; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
  return $ok
}
tps() { sed -n 's/.*, \([0-9]*\) discriminator tokens\/s after step 1.*/\1/p' "$work/disc.log" | tail -n 1; }
wire() { sed -n 's/.*; \([0-9.]*\) wire bytes per discriminator token.*/\1/p' "$work/disc.log" | tail -n 1; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }

declare -A got=()
bytes=0
for r in $(seq 1 "$rounds"); do
  for g in 1 3 2; do
    run_job lo "$g" || continue
    got[lo$g]+="$(tps) "
    [ "$g" = 2 ] && bytes=$(wire)
  done
  for rate in $rates; do
    scripts/wan-emu.sh up "$ns" "$rate" || exit $?
    run_job wan 2 && got[wan$rate]+="$(tps) "
    [ "$r" = 1 ] && grep -m1 "job done" "$work/disc.log" | sed "s/^.*job done/# $rate Mbit\/s, 2 generators: job done/"
    scripts/wan-emu.sh down "$ns" >/dev/null 2>&1
  done
done
for g in 1 2 3; do
  v=$(echo ${got[lo$g]:-} | tr ' ' '\n' | median)
  eval "lo$g=$v"
  echo "bench electra_tps_lo_${g}gen $v tokens/s"
done
for g in 2 3; do
  awk -v a="$(eval echo \$lo$g)" -v b="$lo1" -v g="$g" 'BEGIN { printf "bench electra_tps_vs_1gen_%sgen %.3f ratio\n", g, (b > 0 ? a / b : 0) }'
done
for rate in $rates; do
  v=$(echo ${got[wan$rate]:-} | tr ' ' '\n' | median)
  echo "bench electra_tps_wan_${rate}mbit $v tokens/s"
  awk -v a="$v" -v b="$lo2" -v r="$rate" 'BEGIN { printf "bench electra_shaped_vs_unshaped_%smbit %.3f ratio\n", r, (b > 0 ? a / b : 0) }'
done
echo "bench electra_wire_bytes_per_token $bytes bytes"
awk -v t="$lo2" -v b="$bytes" 'BEGIN { printf "bench electra_link_mbit_at_lo %.3f Mbit/s\n", t * b * 8 / 1e6 }'

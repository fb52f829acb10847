#!/usr/bin/env bash
# The main job end to end, as an operator runs it: a coordinator and stage
# daemons (nebulad) on loopback, over mutually authenticated TLS, train a small
# GPT for 20 steps; then the final weights of every stage are compared with
# the single-process trainer's (nebula-train) on the same job: equal bit for
# bit, as are the losses both log, and the held-out losses (job.eval) both
# log after steps 10 and 20. Three runs: a 2-stage chain with 1F1B holding
# out the tail of the token file, the U-shape (embedding and head on the
# first daemon) with GPipe evaluating on a held-out file of its own (stage
# a's eval_data), and the chain again with the mlm head.
# Each run is also inspected as an operator would: status, metrics and trace
# through the status sockets, and an orderly stop of every daemon.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
nb_work_init pipe-tls
nb_on_fail() { nb_tail_logs 20; }
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 40)

model="{n_layer: 4, d_model: 32, n_head: 4, d_ff: 128, vocab: 256, max_seq: 32, tie_embeddings: false}"
job_section() { # $1 schedule, $2 micro_batches, $3 held-out tokens; the model is $model
  cat <<YAML
job:
  model: $model
  seed: 11
  data: data.tok
  batch: 6
  seq_len: 32
  steps: 20
  micro_batches: $2
  schedule: $1
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 3, grad_clip: 1.0}
  codecs: {forward: fp32, backward: fp32}
  log_every: 5
  eval: {$3, every_steps: 10, batches: 2}
YAML
}

run_layout() { # $1 name, $2 topology, $3 schedule, $4 m, $5 held-out tokens (job.eval), [$6 stage a's line]
  local name=$1 topo=$2 sched=$3 m=$4 held=$5 a_line=${6:-}
  local cp=$base ap=$((base + 1)) bp=$((base + 2))
  base=$((base + 3))
  rm -rf "$work/run"
  mkdir -p "$work/run"
  {
    echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$cp"
    echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
    echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 1"; echo "heartbeat_timeout_s: 5"
    echo "connect_timeout_s: 120"
    job_section "$sched" "$m" "$held"
    echo "  topology: $topo"
    echo "  clusters:"
    echo "    - {name: a, address: 127.0.0.1:$ap}"
    echo "    - {name: b, address: 127.0.0.1:$bp}"
  } > "$work/coord.yaml"
  for n in a b; do
    local p=$ap; [ $n = b ] && p=$bp
    local extra=("checkpoint_dir: run/$n-weights")
    if [ $n = a ] && [ -n "$a_line" ]; then extra+=("$a_line"); fi
    nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 1 5 "${extra[@]}"
  done
  { echo "name: ref"; echo "role: train"; job_section "$sched" "$m" "$held"; echo "  output: run/ref.weights"; } > "$work/ref.yaml"
  "$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref-$name.log" 2>&1 || fail "$name: nebula-train"
  pids=()
  "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/a.yaml" > "$work/a-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/b.yaml" > "$work/b-$name.log" 2>&1 & pids+=($!)
  done_or_failed() {
    ! grep -q "job failed" "$work/coord-$name.log" || fail "$name: job failed"
    grep -q "job done" "$work/coord-$name.log"
  }
  nb_wait_for 300 done_or_failed || fail "$name: no 'job done' within 300 s"
  # an operator's view: the coordinator is done, stage a has stepped 20 times
  "$bin/nebulactl" --socket "$work/run/coord.sock" status --json > "$work/status.json" || fail "$name: nebulactl status"
  grep -q '"done"' "$work/status.json" || fail "$name: coordinator status is not done: $(cat "$work/status.json")"
  "$bin/nebulactl" --socket "$work/run/a.sock" metrics > "$work/metrics.txt" || fail "$name: nebulactl metrics"
  grep -q '^nebula_stage_steps_total 20' "$work/metrics.txt" || fail "$name: stage a did not count 20 steps"
  # the held-out loss: in the coordinator's metrics and status, after step 20
  "$bin/nebulactl" --socket "$work/run/coord.sock" metrics > "$work/coord-metrics.txt" || fail "$name: metrics"
  grep -q '^nebula_job_eval_step 20$' "$work/coord-metrics.txt" || fail "$name: no nebula_job_eval_step 20"
  "$bin/nebulactl" --socket "$work/run/coord.sock" status > "$work/status.txt" || fail "$name: status"
  grep -q '^held-out  loss [0-9.]*  after step 20$' "$work/status.txt" || fail "$name: status lacks the held-out loss"
  "$bin/nebulactl" --socket "$work/run/coord.sock" trace -o "$work/trace.json" >/dev/null || fail "$name: trace"
  python3 - "$work/trace.json" <<'PY' || fail "$name: the coordinator's trace lacks forward and backward events of both stages"
import json, sys
ev = json.load(open(sys.argv[1]))["traceEvents"]
names = {(e.get("name"), e.get("tid")) for e in ev if e.get("ph") == "X"}
assert len({n for n, _ in names} & {"forward", "backward"}) == 2, names
assert len({t for _, t in names}) >= 2, names
PY
  for s in "$work/run/coord.sock" "$work/run/a.sock" "$work/run/b.sock"; do
    "$bin/nebulactl" --socket "$s" stop >/dev/null || fail "$name: stop $s"
  done
  for p in "${pids[@]}"; do wait "$p" || fail "$name: a daemon exited with status $?"; done
  pids=()
  "$bin/nebula-weights" compare --tol 0 "$work/run/ref.weights" "$work"/run/*-weights/final-stage*.weights \
    > "$work/compare-$name.log" 2>&1 || { cat "$work/compare-$name.log"; fail "$name: weights differ"; }
  tail -n 1 "$work/compare-$name.log"
  # the losses both logged (steps 1, 5, 10, 15, 20; four decimals) are equal too
  sed -n 's/^step *\([0-9]*\)\/20  loss \([0-9.]*\) .*/\1 \2/p' "$work/ref-$name.log" > "$work/ref-loss.txt"
  sed -n 's/.* step \([0-9]*\)\/20 loss \([0-9.]*\) .*/\1 \2/p' "$work/coord-$name.log" > "$work/coord-loss.txt"
  [ "$(wc -l < "$work/ref-loss.txt")" -eq 5 ] || fail "$name: nebula-train did not log 5 losses"
  cmp -s "$work/ref-loss.txt" "$work/coord-loss.txt" ||
    fail "$name: logged losses differ: $(paste -d' ' "$work/ref-loss.txt" "$work/coord-loss.txt" | tr '\n' ';')"
  # and so are the held-out losses (after steps 10 and 20) and the summaries
  sed -n 's/^step *\([0-9]*\)\/20 .*val_loss \([0-9.]*\)$/\1 \2/p' "$work/ref-$name.log" > "$work/ref-val.txt"
  sed -n 's/.* step \([0-9]*\)\/20 .* val_loss \([0-9.]*\)$/\1 \2/p' "$work/coord-$name.log" > "$work/coord-val.txt"
  [ "$(wc -l < "$work/ref-val.txt")" -eq 2 ] || fail "$name: nebula-train did not log 2 held-out losses"
  cmp -s "$work/ref-val.txt" "$work/coord-val.txt" ||
    fail "$name: held-out losses differ: $(paste -d' ' "$work/ref-val.txt" "$work/coord-val.txt" | tr '\n' ';')"
  summary=$(sed -n 's/.*\(validation loss .*\)$/\1/p' "$work/ref-$name.log")
  [ -n "$summary" ] || fail "$name: nebula-train's summary lacks the validation loss"
  grep "job done" "$work/coord-$name.log" | grep -qF ", $summary" ||
    fail "$name: the coordinator's summary lacks nebula-train's '$summary'"
  echo "ok $name (held-out: $(tr '\n' ';' < "$work/ref-val.txt"))"
}

"$bin/nebula-tokenize" /usr/share/common-licenses/GPL-2 "$work/held.tok" >/dev/null || fail "held-out token file"
run_layout chain-1f1b chain 1f1b 3 "fraction: 0.1"
run_layout ushape-gpipe ushape gpipe 2 "data: held.tok" "eval_data: held.tok"
# the masked-LM head: stage 0 draws masked batches as nebula-train does, and
# the labels (-1 where unmasked) cross the TLS link to the head
model="{n_layer: 4, d_model: 32, n_head: 4, d_ff: 128, vocab: 257, max_seq: 32, causal: false, head: mlm, tie_embeddings: false}"
run_layout chain-mlm-1f1b chain 1f1b 3 "fraction: 0.1"

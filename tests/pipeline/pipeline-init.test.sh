#!/usr/bin/env bash
# A pipeline fine-tuning job: it starts from pretrained weights (job.init)
# with the embedding, block 0 and one weight of block 3 frozen (job.freeze).
# nebula-train trains a small GPT, nebula-weights exports it as safetensors
# (GPT-2 names), then a coordinator and two stage daemons on loopback (TLS)
# run a job with job.init and job.freeze, each stage loading only its own
# blocks from its `init` file and freezing the tensors it holds. The final
# weights of both stages equal those of nebula-train running the same job
# section from the same file (within 1e-5 of each tensor's largest
# magnitude); every frozen tensor equals the pretrained one bit for bit
# and every other one moved; stage a's memory breakdown (nebulactl status)
# holds no gradient or optimizer state for its frozen tensors. The same
# from a whole-model Nebula weights file (nebula-train's output): each stage
# takes its slice of it. A stage without `init` refuses such a job with the
# reason, and the coordinator reports the job failed; a job.freeze pattern
# that names no tensor keeps the coordinator from starting, with the reason.
set -euo pipefail
build=${NB_BUILD:-build}
bin="$build/bin"
work=$(mktemp -d /tmp/nb-pipe-init.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$work"/*.log; do echo "--- $f"; tail -n 20 "$f"; done; exit 1; }

. tests/support/pipeline.sh
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 40)

job_section() { # $1 steps
  cat <<YAML
job:
  model: {n_layer: 4, d_model: 32, n_head: 4, d_ff: 128, vocab: 256, max_seq: 32, tie_embeddings: false}
  seed: 11
  data: data.tok
  batch: 6
  seq_len: 32
  steps: $1
  micro_batches: 2
  schedule: gpipe
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 3, grad_clip: 1.0}
  codecs: {forward: fp32, backward: fp32}
  log_every: 5
YAML
}

# the pretrained model: 15 steps, exported with GPT-2 names
{ echo "name: pre"; echo "role: train"; job_section 15; echo "  output: pre.weights"; } > "$work/pre.yaml"
"$bin/nebula-train" --config "$work/pre.yaml" > "$work/pre.log" 2>&1 || fail "pretraining"
"$bin/nebula-weights" export "$work/pre.weights" "$work/pre.safetensors" > /dev/null || fail "export"
# the fine-tuning: the embedding, block 0 and block 3's fc.w stay as pretrained
freeze='  freeze: ["wte", "wpe", "h0.*", "h3.fc.w"]'
# the reference: nebula-train from the same file
{ echo "name: ref"; echo "role: train"; job_section 10; echo "  init: pre.safetensors"; echo "$freeze"
  echo "  output: run/ref.weights"; } > "$work/ref.yaml"
mkdir -p "$work/run"
"$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref.log" 2>&1 || fail "nebula-train with job.init"
grep -q "weights from .*pre.safetensors" "$work/ref.log" || fail "nebula-train did not load job.init"
grep -q "frozen: 15 of 53 tensors" "$work/ref.log" || fail "nebula-train does not report the frozen tensors"

run() { # $1 name, $2 init line of stage b ("" for none), $3 expected "done" or "failed", [$4 stage a's init file]
  local name=$1 binit=$2 want=$3 ainit=${4:-pre.safetensors}
  local cp=$base ap=$((base + 1)) bp=$((base + 2))
  base=$((base + 3))
  rm -rf "$work/run/a-weights" "$work/run/b-weights"
  {
    echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$cp"
    echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
    echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 1"; echo "heartbeat_timeout_s: 5"
    echo "connect_timeout_s: 30"
    job_section 10
    echo "  init: pre.safetensors"
    echo "$freeze"
    echo "  clusters:"
    echo "    - {name: a, address: 127.0.0.1:$ap}"
    echo "    - {name: b, address: 127.0.0.1:$bp}"
  } > "$work/coord.yaml"
  nb_stage_yaml "$work/a.yaml" a "127.0.0.1:$ap" "127.0.0.1:$cp" 1 5 "checkpoint_dir: run/a-weights" \
    "init: $ainit"
  nb_stage_yaml "$work/b.yaml" b "127.0.0.1:$bp" "127.0.0.1:$cp" 1 5 "checkpoint_dir: run/b-weights" "$binit"
  pids=()
  "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/a.yaml" > "$work/a-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/b.yaml" > "$work/b-$name.log" 2>&1 & pids+=($!)
  local got=""
  for _ in $(seq 1 600); do
    grep -q "job done" "$work/coord-$name.log" && { got=done; break; }
    grep -q "job failed" "$work/coord-$name.log" && { got=failed; break; }
    sleep 0.1
  done
  [ "$got" = "$want" ] || fail "$name: job ${got:-still running after 60 s}, expected $want"
  if [ "$want" = done ]; then # an orderly stop; every daemon exits 0 (sanitizer builds: no report)
    "$bin/nebulactl" --socket "$work/run/a.sock" status --json > "$work/a-$name.json" || fail "$name: status of a"
    for s in "$work/run/coord.sock" "$work/run/a.sock" "$work/run/b.sock"; do
      "$bin/nebulactl" --socket "$s" stop >/dev/null || fail "$name: stop $s"
    done
    for p in "${pids[@]}"; do wait "$p" || fail "$name: a daemon exited with status $?"; done
  else # the coordinator ends a failed job on its own; stop the rest
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" || true; done
  fi
  pids=()
}

run with-init "init: pre.safetensors" done
"$bin/nebula-weights" compare --tol 1e-5 "$work/run/ref.weights" "$work"/run/*-weights/final-stage*.weights \
  > "$work/compare.log" 2>&1 || { cat "$work/compare.log"; fail "pipeline weights differ from nebula-train's"; }
tail -n 1 "$work/compare.log"
grep -q "stage 0: weights from .*pre.safetensors" "$work/a-with-init.log" || fail "stage a did not load its part"
grep -q "stage 1: weights from .*pre.safetensors" "$work/b-with-init.log" || fail "stage b did not load its part"
# the pipeline's result is not the pretrained model itself
"$bin/nebula-weights" compare --tol 1e-5 "$work/pre.weights" "$work"/run/*-weights/final-stage*.weights \
  > /dev/null 2>&1 && fail "the job changed nothing"

# frozen tensors kept their pretrained values bit for bit; the others trained
"$bin/nebula-weights" compare --tol 0 "$work/pre.weights" "$work"/run/*-weights/final-stage*.weights \
  > "$work/frozen.log" 2>&1 || true
for t in wte wpe h0.ln1.w h0.qkv.w h0.fcproj.b h3.fc.w; do
  grep -Eq "^  $t +max abs diff 0," "$work/frozen.log" || fail "frozen $t changed: $(grep " $t " "$work/frozen.log")"
done
for t in h1.qkv.w h2.ln1.b h3.fc.b h3.fcproj.w lm.w lnf.w; do
  if grep -Eq "^  $t +max abs diff 0," "$work/frozen.log"; then fail "trainable $t did not change"; fi
done
# stage a (embedding + blocks 0-1) holds 34624 parameters, 21920 of them
# frozen: gradients and both AdamW moments of the other 12704 only
python3 - "$work/a-with-init.json" <<'PY' || fail "stage a's memory: $(cat "$work/a-with-init.json")"
import json, sys
mod = json.load(open(sys.argv[1]))["memory"]["model"]
assert mod["weights"] == 34624 * 4, mod
assert mod["gradients"] == 12704 * 4, mod
assert mod["optimizer"] == 2 * 12704 * 4, mod
print("stage a memory: weights %d, gradients %d, optimizer %d bytes" % (mod["weights"], mod["gradients"], mod["optimizer"]))
PY

# a freeze pattern that names no tensor: the coordinator refuses the job
{ echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$base"
  echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
  echo "status_socket: run/coord.sock"; job_section 10; echo '  freeze: ["wte", "h4.*"]'
  echo "  clusters:"; echo "    - {name: a, address: 127.0.0.1:$((base + 1))}"
  echo "    - {name: b, address: 127.0.0.1:$((base + 2))}"; } > "$work/bad.yaml"
rc=0
timeout 60 "$bin/nebulad" --config "$work/bad.yaml" > "$work/bad.log" 2>&1 || rc=$?
echo "coordinator exit $rc"; [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "the coordinator started a job freezing h4.* of a 4-block model (exit $rc)"
grep -q 'job.freeze\[1\] "h4.\*" matches no tensor of the model' "$work/bad.log" || fail "no reason given for h4.*"
grep -m1 "matches no tensor" "$work/bad.log"

# a whole-model weights file (not a stage's part): each stage takes its slice
run with-weights-init "init: pre.weights" done pre.weights
"$bin/nebula-weights" compare --tol 1e-5 "$work/run/ref.weights" "$work"/run/*-weights/final-stage*.weights \
  > "$work/compare-w.log" 2>&1 || { cat "$work/compare-w.log"; fail "pipeline from pre.weights differs from nebula-train's"; }
tail -n 1 "$work/compare-w.log"
grep -q "stage 0: weights from .*pre.weights" "$work/a-with-weights-init.log" || fail "stage a did not load pre.weights"
grep -q "stage 1: weights from .*pre.weights" "$work/b-with-weights-init.log" || fail "stage b did not load pre.weights"

run no-init "" failed
grep -q "this daemon's configuration has no init file" "$work/coord-no-init.log" ||
  fail "the coordinator does not name why the job failed"
grep -m1 "no init file" "$work/coord-no-init.log"
echo ok

#!/usr/bin/env bash
# A heterogeneous pipeline: one stage daemon on a CUDA device, the other on
# the CPU, over mutually authenticated TLS. The CUDA device is the emulated
# one (libnebula-cuda-emu.so through NEBULA_CUDA_MODULE: the backend's .cu
# sources run on the host), so this runs on any machine; with
# NB_TEST_CUDA_MODULE set to the real module (libnebula-cuda.so) the same job
# runs on a GPU. A small GPT trains 4 steps three times:
# all on the CPU (the reference), stage 0 on cuda:0, then stage 1 (with the
# head and the loss) on cuda:0. Activations cross as fp16 and gradients as
# bf16: the GPU stage encodes on its device (or, on a module without the
# codec primitives, through its pinned staging buffer) and the CPU stage
# decodes what it sent, and the other way round. Every step's loss, as the head's daemon logs
# it at full precision, matches the all-CPU run within 1e-4 relative, and the
# final weights within 1e-3 relative (the CUDA kernels sum in another order
# than the CPU's; the tolerances of each op are in docs/kernels.md). The GPU
# stage's status shows its device and memory, and the coordinator logs the
# device figures the planner gets. Finally a stage configured with
# `devices: [cuda:0]` and no usable CUDA module refuses the job, and the
# coordinator's failure names the device and the reason.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
emu=${NB_TEST_CUDA_MODULE:-$PWD/$build/lib/libnebula-cuda-emu.so}
[ -f "$emu" ] || nb_skip "no CUDA module $emu (the emulated one is not built in this build, e.g. TSan)"
nb_work_init pipe-cuda-emu
nb_on_fail() { nb_tail_logs 20; }
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 20)
steps=4

write_configs() { # $1 devices of a, $2 devices of b
  local cp=$base ap=$((base + 1)) bp=$((base + 2))
  base=$((base + 3))
  rm -rf "$work/run"
  mkdir -p "$work/run"
  cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 1
heartbeat_timeout_s: 5
connect_timeout_s: 120
job:
  model: {n_layer: 2, d_model: 32, n_head: 2, d_ff: 64, vocab: 256, max_seq: 8, tie_embeddings: false}
  seed: 5
  data: data.tok
  batch: 2
  seq_len: 8
  steps: $steps
  micro_batches: 2
  schedule: 1f1b
  optimizer: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 2, grad_clip: 1.0}
  codecs: {forward: fp16, backward: bf16}
  log_every: 1
  topology: chain
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
    - {name: b, address: 127.0.0.1:$bp}
YAML
  nb_stage_yaml "$work/a.yaml" a "127.0.0.1:$ap" "127.0.0.1:$cp" 1 5 "checkpoint_dir: run/a-weights" \
    "devices: $1" "log_level: debug"
  nb_stage_yaml "$work/b.yaml" b "127.0.0.1:$bp" "127.0.0.1:$cp" 1 5 "checkpoint_dir: run/b-weights" \
    "devices: $2" "log_level: debug"
}

run() { # $1 name, $2 devices of a, $3 devices of b; NEBULA_CUDA_MODULE as exported
  local name=$1
  write_configs "$2" "$3"
  pids=()
  "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/a.yaml" > "$work/a-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/b.yaml" > "$work/b-$name.log" 2>&1 & pids+=($!)
  done_or_failed() {
    ! grep -q "job failed" "$work/coord-$name.log" || fail "$name: job failed: $(grep -o 'job failed.*' "$work/coord-$name.log")"
    grep -q "job done" "$work/coord-$name.log"
  }
  nb_wait_for 300 done_or_failed || fail "$name: no 'job done' within 300 s"
  for n in a b; do
    "$bin/nebulactl" --socket "$work/run/$n.sock" status --json > "$work/status-$name-$n.json" ||
      fail "$name: nebulactl status of $n"
  done
  "$bin/nebulactl" --socket "$work/run/b.sock" status > "$work/status-$name-b.txt" || fail "$name: status of b"
  for s in "$work/run/coord.sock" "$work/run/a.sock" "$work/run/b.sock"; do
    "$bin/nebulactl" --socket "$s" stop >/dev/null || fail "$name: stop $s"
  done
  for p in "${pids[@]}"; do wait "$p" || fail "$name: a daemon exited with status $?"; done
  pids=()
  sed -n 's/.* step \([0-9]*\) loss \([-0-9.e+a-z]*\)$/\1 \2/p' "$work/b-$name.log" > "$work/loss-$name.txt"
  [ "$(wc -l < "$work/loss-$name.txt")" -eq $steps ] ||
    fail "$name: the head's daemon logged $(wc -l < "$work/loss-$name.txt") step losses, not $steps"
  mkdir -p "$work/weights-$name"
  cp "$work"/run/*-weights/final-stage*.weights "$work/weights-$name/"
}

# the figures of a stage's status: its device, free and total memory
check_device() { # $1 status json, $2 device name
  python3 - "$1" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
d = s["memory"]["device"]
assert d["name"] == sys.argv[2], d
assert d["total"] > 0 and 0 < d["free"] <= d["total"], d
if sys.argv[2].startswith("cuda"):
    # the device counts its allocations: the stage's model state is on it,
    # so free is below total by at least that much
    held = s["memory"]["model"]["total"]
    assert d["total"] - d["free"] >= held > 0, (d, held)
print("%s: %s free of %d MiB" % (sys.argv[1].rsplit("/", 1)[-1], d["name"], d["total"] >> 20))
PY
}

compare() { # $1 name of the run against cpu
  python3 - "$work/loss-cpu.txt" "$work/loss-$1.txt" "$1" <<'PY' || fail "$1: the losses are far from the all-CPU run's"
import sys
ref = [float(l.split()[1]) for l in open(sys.argv[1])]
got = [float(l.split()[1]) for l in open(sys.argv[2])]
worst = max(abs(a - b) / abs(a) for a, b in zip(ref, got))
print("%s losses: %s; max relative difference to the all-CPU run %.3g (tolerance 1e-4)"
      % (sys.argv[3], " ".join("%.6f" % x for x in got), worst))
assert len(ref) == len(got) and worst <= 1e-4, (ref, got)
PY
  for s in 0 1; do
    "$bin/nebula-weights" compare --tol 1e-3 "$work/weights-cpu/final-stage$s.weights" \
      "$work/weights-$1/final-stage$s.weights" > "$work/compare-$1.log" 2>&1 ||
      { cat "$work/compare-$1.log"; fail "$1: stage $s's weights are far from the all-CPU run's"; }
    echo "$1 stage $s: $(tail -n 1 "$work/compare-$1.log")"
  done
}

export NEBULA_CUDA_MODULE="$emu"
run cpu "[cpu]" "[cpu]"
check_device "$work/status-cpu-a.json" cpu || fail "cpu: stage a's status lacks its device"
run gpu-first "[cuda:0]" "[cpu]"
check_device "$work/status-gpu-first-a.json" cuda:0 || fail "gpu-first: stage a's status lacks its CUDA device"
check_device "$work/status-gpu-first-b.json" cpu || fail "gpu-first: stage b's status lacks its device"
expect_grep " a: device cuda:0: [0-9.]* MiB free of [0-9.]* MiB, the stage holds [0-9.]* MiB" \
  "$work/coord-gpu-first.log" "gpu-first: the coordinator did not log the GPU stage's device memory"
expect_grep "codecs run on the" "$work/a-gpu-first.log" "gpu-first: the GPU stage does not say where its codecs run"
echo "gpu-first: stage a's $(grep -o 'codecs run on the [a-z]*' "$work/a-gpu-first.log" | head -n 1)"
compare gpu-first
run gpu-head "[cpu]" "[cuda:0]"
check_device "$work/status-gpu-head-b.json" cuda:0 || fail "gpu-head: stage b's status lacks its CUDA device"
expect_grep "^device    cuda:0  free .* of .*" "$work/status-gpu-head-b.txt" "gpu-head: nebulactl status shows no device line"
compare gpu-head

# no usable CUDA module: the stage refuses the job, naming device and reason
export NEBULA_CUDA_MODULE="$work/no-such-module.so"
write_configs "[cpu]" "[cuda:0]"
"$bin/nebulad" --config "$work/coord.yaml" > "$work/coord-nomod.log" 2>&1 & c=$!; pids=($c)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a-nomod.log" 2>&1 & a=$!; pids+=($a)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b-nomod.log" 2>&1 & b=$!; pids+=($b)
failed() { grep -q "job failed" "$work/coord-nomod.log"; }
nb_wait_for 120 failed || fail "nomod: the job did not fail"
expect_grep "job failed: stage daemon b: b: device cuda:0: cannot load the CUDA module .*no-such-module.so" \
  "$work/coord-nomod.log" "nomod: the refusal does not name the device and the missing module"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=()
echo "ok nomod: $(grep -o "job failed: .*" "$work/coord-nomod.log" | head -n 1)"
echo "ok pipeline-cuda-emu"

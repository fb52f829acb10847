#!/usr/bin/env bash
# make demo: the main job on one machine. A coordinator and two stage daemons
# (config/demo/) start on loopback, authenticate each other over TLS 1.3 with
# certificates made here, and train a small GPT (4 blocks, d_model 128) on
# the GPL-3 licence text every Debian machine has, for 300 steps: stage
# demo-a holds the embedding and blocks 0-1, demo-b blocks 2-3 and the head;
# activations cross the link as fp16, gradients as int8; the coordinator's
# planner chooses micro-batches and schedule from measurements. One progress
# line per step (with the predicted step time), a summary, a Chrome trace of
# the last steps (open it in Perfetto or chrome://tracing), then every daemon
# is stopped in order.
#   NB_BUILD   build directory holding bin/ (default: build)
set -euo pipefail
build=${NB_BUILD:-build}
bin="$build/bin"
# The demo configs point at build/demo (relative to config/demo/).
work=build/demo
text=${DEMO_TEXT:-/usr/share/common-licenses/GPL-3}
for b in nebulad nebulactl nebula-tokenize; do
  [ -x "$bin/$b" ] || { echo "demo: $bin/$b is missing; run make first" >&2; exit 1; }
done
[ -r "$text" ] || { echo "demo: $text is missing (package base-files); set DEMO_TEXT to another text" >&2; exit 1; }
for port in 7400 7401 7402; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port on 127.0.0.1 is in use (another demo still running?)" >&2; exit 1
  fi
done

rm -rf "$work/run"
mkdir -p "$work/run"
[ -f "$work/certs/demo-b.pem" ] || bash scripts/gen-certs.sh "$work/certs" demo-coord demo-a demo-b >/dev/null
"$bin/nebula-tokenize" "$text" "$work/gpl3.tok"

pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
: > "$work/run/coordinator.log" # exists before the follower below opens it
"$bin/nebulad" --config config/demo/coordinator.yaml > "$work/run/coordinator.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config config/demo/stage-a.yaml > "$work/run/demo-a.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config config/demo/stage-b.yaml > "$work/run/demo-b.log" 2>&1 & pids+=($!)

# Follow the coordinator: its log carries the progress lines.
tail -n +1 -f "$work/run/coordinator.log" --pid "${pids[0]}" &
tailer=$!
status=1
for _ in $(seq 1 1800); do
  if grep -q "job done" "$work/run/coordinator.log"; then status=0; break; fi
  if grep -q "job failed" "$work/run/coordinator.log" || ! kill -0 "${pids[0]}" 2>/dev/null; then break; fi
  sleep 0.2
done
sleep 0.3
kill "$tailer" 2>/dev/null || true
if [ $status -ne 0 ]; then
  echo "demo: the job did not finish; logs in $work/run/" >&2
  tail -n 5 "$work/run/demo-a.log" "$work/run/demo-b.log" >&2
  exit 1
fi
echo
"$bin/nebulactl" --socket "$work/run/demo-coord.sock" status
"$bin/nebulactl" --socket "$work/run/demo-coord.sock" trace -o "$work/trace.json"
echo "demo: Chrome trace of the last steps in $work/trace.json; final weights in $work/run/demo-*-checkpoints/"
for s in demo-coord demo-a demo-b; do
  "$bin/nebulactl" --socket "$work/run/$s.sock" stop >/dev/null
done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
echo "demo: every daemon stopped"

#!/usr/bin/env bash
# stage_memory.bench.sh - where a stage daemon's memory goes. A coordinator
# and two stage daemons train a GPT whose state dwarfs the process's fixed
# cost (8 blocks, d_model 512, batch 16 x 64 tokens, m = 4, 1F1B) for 3
# steps on loopback; then each stage's `nebulactl status --json` memory
# breakdown is read while it is still up. Printed, per stage s:
#   bench stage_mem_<s>_rss_vs_model    peak RSS / model state (target <= 1.5)
#   bench stage_mem_<s>_model_mib       weights + grads + AdamW + stash
#   bench stage_mem_<s>_other_mib       RSS - model state
#   bench stage_mem_<s>_rss_file_mib    file-backed pages (library code)
#   bench stage_mem_<s>_heap_free_mib   free blocks malloc keeps
# and `# ...` lines with the whole breakdown. No root needed.
set -u
build=${NB_BUILD:-build}
bin="$build/bin"
[ -x "$bin/nebulad" ] || { echo "no $bin/nebulad (run make first)"; exit 1; }
work=$(mktemp -d /tmp/nb-stage-mem.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
. tests/support/pipeline.sh
nb_pipe_prepare "$work" "$bin" || exit 1
port=$(( 29000 + ($$ % 300) * 3 ))
mkdir -p "$work/run"
cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$port
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 1
heartbeat_timeout_s: 30
connect_timeout_s: 60
job:
  model: {n_layer: 8, d_model: 512, n_head: 8, vocab: 256, max_seq: 64, tie_embeddings: false}
  data: data.tok
  batch: 16
  seq_len: 64
  steps: 3
  micro_batches: 4
  schedule: 1f1b
  optimizer: {lr: 1e-3, min_lr: 1e-4, warmup_steps: 2}
  clusters:
    - {name: a, address: "127.0.0.1:$((port + 1))"}
    - {name: b, address: "127.0.0.1:$((port + 2))"}
YAML
nb_stage_yaml "$work/a.yaml" a "127.0.0.1:$((port + 1))" "127.0.0.1:$port" 1 30
nb_stage_yaml "$work/b.yaml" b "127.0.0.1:$((port + 2))" "127.0.0.1:$port" 1 30
for s in coord a b; do "$bin/nebulad" --config "$work/$s.yaml" > "$work/$s.log" 2>&1 & pids+=($!); done
for _ in $(seq 1 3000); do
  grep -q "job done\|job failed" "$work/coord.log" && break
  sleep 0.2
done
grep -q "job done" "$work/coord.log" || { echo "stage_memory: the job did not finish"; tail -n 5 "$work"/*.log; exit 1; }
for s in a b; do
  "$bin/nebulactl" --socket "$work/run/$s.sock" status --json > "$work/$s.json" || exit 1
  python3 - "$s" "$work/$s.json" <<'PY' || exit 1
import json, sys
s, m = sys.argv[1], json.load(open(sys.argv[2]))["memory"]
mib = lambda b: b / 1048576
mod = m["model"]
print(f"# stage {s}: model {mib(mod['total']):.1f} MiB (weights {mib(mod['weights']):.1f}, grads {mib(mod['gradients']):.1f}, "
      f"AdamW {mib(mod['optimizer']):.1f}, activations {mib(mod['activations']):.1f}); rss {mib(m['rss']):.1f} MiB "
      f"(anon {mib(m['rss_anon']):.1f}, files {mib(m['rss_file']):.1f}), peak {mib(m['peak_rss']):.1f} MiB; heap in use "
      f"{mib(m['heap']['in_use']):.1f} MiB, free {mib(m['heap']['free']):.1f} MiB; {m['threads']} threads")
assert mod["total"] > 0
print(f"bench stage_mem_{s}_rss_vs_model {m['peak_rss'] / mod['total']:.3f} ratio")
print(f"bench stage_mem_{s}_model_mib {mib(mod['total']):.1f} MiB")
print(f"bench stage_mem_{s}_other_mib {mib(m['rss'] - mod['total']):.1f} MiB")
print(f"bench stage_mem_{s}_rss_file_mib {mib(m['rss_file']):.1f} MiB")
print(f"bench stage_mem_{s}_heap_free_mib {mib(m['heap']['free']):.1f} MiB")
PY
done
for s in coord a b; do "$bin/nebulactl" --socket "$work/run/$s.sock" stop >/dev/null 2>&1; done

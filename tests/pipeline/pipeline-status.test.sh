#!/usr/bin/env bash
# What `nebulactl status` shows of a running job, read as an operator reads
# it: a coordinator and two stage daemons train a small GPT over TLS on
# loopback, then
#   - the coordinator lists the stage-to-stage links (LINKS table: from, to,
#     round trip, measured Mbit/s, bytes), built from the stages' reports;
#   - each stage reports its memory: the model state by part, the heap and
#     the resident set, the parts consistent with each other and with the
#     nebula_stage_model_bytes / nebula_memory_* metrics;
#   - each connection says which TLS record layer it runs (kernel or user).
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
nb_work_init pipe-status
nb_on_fail() { nb_tail_logs 20; }
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 40)
cp=$base ap=$((base + 1)) bp=$((base + 2))
mkdir -p "$work/run"
cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 0.2
heartbeat_timeout_s: 10
connect_timeout_s: 120
job:
  model: {n_layer: 2, d_model: 128, n_head: 4, vocab: 256, max_seq: 32, tie_embeddings: false}
  data: data.tok
  batch: 8
  seq_len: 32
  steps: 40
  micro_batches: 2
  schedule: 1f1b
  clusters:
    - {name: a, address: "127.0.0.1:$ap"}
    - {name: b, address: "127.0.0.1:$bp"}
YAML
nb_stage_yaml "$work/a.yaml" a "127.0.0.1:$ap" "127.0.0.1:$cp" 0.2 10 ${NB_STAGE_EXTRA:+"$NB_STAGE_EXTRA"}
nb_stage_yaml "$work/b.yaml" b "127.0.0.1:$bp" "127.0.0.1:$cp" 0.2 10 ${NB_STAGE_EXTRA:+"$NB_STAGE_EXTRA"}
"$bin/nebulad" --config "$work/coord.yaml" > "$work/coord.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & pids+=($!)
done_or_failed() {
  ! grep -q "job failed" "$work/coord.log" || fail "job failed"
  grep -q "job done" "$work/coord.log"
}
nb_wait_for 300 done_or_failed || fail "no 'job done' within 300 s"

ctl() { "$bin/nebulactl" --socket "$work/run/$1.sock" "${@:2}"; }

# ---- the coordinator's LINKS table ----
ctl coord status --json > "$work/coord.json" || fail "nebulactl status on the coordinator"
python3 - "$work/coord.json" <<'PY' || fail "the coordinator's links are incomplete: $(cat "$work/coord.json")"
import json, sys
links = {(l["from"], l["to"]): l for l in json.load(open(sys.argv[1]))["links"]}
assert set(links) == {("a", "b"), ("b", "a")}, links
for k, l in links.items():
    assert l["rtt_ms"] is not None and l["rtt_ms"] > 0, (k, l)
    assert l["mbps"] is not None and l["mbps"] > 0, (k, l)
    assert l["bytes"] > 0, (k, l)
# a -> b carries activations, b -> a gradients: 40 steps x 2 micro-batches x 4 x 32 x 128 floats each way
assert links[("a", "b")]["bytes"] >= 40 * 2 * 4 * 32 * 128 * 4, links
assert links[("b", "a")]["bytes"] >= 40 * 2 * 4 * 32 * 128 * 4, links
PY
ctl coord status > "$work/coord.txt" || fail "nebulactl status (text) on the coordinator"
grep -q '^LINK FROM' "$work/coord.txt" || fail "no LINKS table in: $(cat "$work/coord.txt")"
grep -Eq '^a +b +[0-9.]+ +[0-9.]+ +[0-9.]+ (KiB|MiB)' "$work/coord.txt" ||
  fail "no a -> b row with rtt, Mbit/s and bytes in: $(cat "$work/coord.txt")"
grep -Eq '^b +a +[0-9.]+ +[0-9.]+ +[0-9.]+ (KiB|MiB)' "$work/coord.txt" ||
  fail "no b -> a row with rtt, Mbit/s and bytes in: $(cat "$work/coord.txt")"

# ---- each stage's memory ----
for s in a b; do
  ctl $s status --json > "$work/$s.json" || fail "nebulactl status on $s"
  ctl $s metrics > "$work/$s.metrics" || fail "nebulactl metrics on $s"
  python3 - "$work/$s.json" "$work/$s.metrics" <<'PY' || fail "stage $s: memory breakdown inconsistent: $(cat "$work/$s.json")"
import json, sys
st = json.load(open(sys.argv[1]))
met = {}
for line in open(sys.argv[2]):
    if line and not line.startswith("#"):
        k, v = line.rsplit(" ", 1)
        met[k] = float(v)
m = st["memory"]
mod = m["model"]
parts = mod["weights"] + mod["gradients"] + mod["optimizer"] + mod["activations"]
assert mod["weights"] > 0 and mod["activations"] > 0, mod
assert parts == mod["total"], mod
assert mod["total"] == met["nebula_stage_model_bytes"], (mod, met["nebula_stage_model_bytes"])
assert mod["weights"] == met['nebula_memory_model_bytes{part="weights"}']
assert mod["total"] <= m["rss_anon"] <= m["rss"] <= m["peak_rss"], m
assert abs(m["rss_anon"] + m["rss_file"] - m["rss"]) <= 1 << 20, m
assert m["other"] == m["rss"] - mod["total"], m
assert met["nebula_memory_rss_bytes"] > 0 and met["nebula_memory_peak_rss_bytes"] >= mod["total"]
assert m["threads"] >= 2, m
for p in st["peers"]:
    assert p["tls"] in ("ktls", "ktls-tx", "ktls-rx", "user"), p
PY
  # a daemon that runs on the CPU never maps cuBLAS (the CUDA backend is a
  # module loaded on demand): it would cost about 140 MiB resident
  pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$work/$s.json")
  ! grep -q 'libcublas\|libcudart\|libnebula-cuda' "/proc/$pid/maps" ||
    fail "stage $s (CPU only) maps the CUDA libraries: $(grep -o '/[^ ]*cu[a-z]*\.so[.0-9]*' "/proc/$pid/maps" | sort -u | tr '\n' ' ')"
  ctl $s status > "$work/$s.txt" || fail "nebulactl status (text) on $s"
  grep -Eq '^memory +rss [0-9.]+ MiB +peak [0-9.]+ MiB' "$work/$s.txt" || fail "stage $s: no memory line: $(cat "$work/$s.txt")"
  grep -Eq '^model +[0-9.]+ (KiB|MiB) = weights ' "$work/$s.txt" || fail "stage $s: no model line: $(cat "$work/$s.txt")"
done
for s in coord a b; do ctl $s stop >/dev/null || fail "stop $s"; done
for p in "${pids[@]}"; do wait "$p" || fail "a daemon exited with status $?"; done
pids=()
[ -n "${NB_SHOW:-}" ] && cat "$work/coord.txt" "$work/a.txt"
echo "ok links, memory and TLS record layer in status"

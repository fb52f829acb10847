#!/usr/bin/env bash
# The transport limits of the `transport:` section, and tls.ktls, act in the
# daemons:
#   - `--check-config` refuses an out-of-range value (exit 78), naming the key;
#   - a job whose micro-batch tensors fit the stages' max_frame_payload trains;
#   - a job whose tensors do not fit fails with the reason (the stage names
#     transport.max_frame_payload), instead of waiting forever;
#   - tls.ktls: a bad value is refused; `on` is refused (check and start)
#     where the kernel offers no kernel TLS.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
nb_work_init pipe-transport
nb_on_fail() { nb_tail_logs 20; }
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 40)

# ---- a bad value is refused, naming the key ----
nb_stage_yaml "$work/bad.yaml" a "127.0.0.1:$base" "127.0.0.1:$((base + 1))" 1 10 \
  "transport: {max_frame_payload: 4KiB}"
expect_rc 78 "$bin/nebulad" --check-config "$work/bad.yaml" > "$work/bad.out" 2>&1
expect_grep 'transport.max_frame_payload: out of bounds' "$work/bad.out"
nb_stage_yaml "$work/bad2.yaml" a "127.0.0.1:$base" "127.0.0.1:$((base + 1))" 1 10 \
  "transport: {max_pending_handshakes: 0}"
expect_rc 78 "$bin/nebulad" --check-config "$work/bad2.yaml" > "$work/bad2.out" 2>&1
expect_grep 'transport.max_pending_handshakes: out of bounds' "$work/bad2.out"

# ---- tls.ktls: a bad value is refused; "on" only where the kernel offers kernel TLS ----
nb_stage_yaml "$work/k1.yaml" a "127.0.0.1:$base" "127.0.0.1:$((base + 1))" 1 10
sed -i 's|ca: certs/ca.pem}|ca: certs/ca.pem, ktls: maybe}|' "$work/k1.yaml"
expect_rc 78 "$bin/nebulad" --check-config "$work/k1.yaml" > "$work/k1.out" 2>&1
expect_grep "tls.ktls: must be one of off, auto, on; got 'maybe'" "$work/k1.out"
sed -i 's|ktls: maybe}|ktls: on}|' "$work/k1.yaml"
# the kernel's answer to TCP_ULP "tls" on an unconnected socket: ENOENT = no kernel TLS
ulp=$(python3 -c 'import socket
try: socket.socket().setsockopt(socket.IPPROTO_TCP, 31, b"tls")
except OSError as e: print(e.errno)' || true)
if [ "$ulp" = 2 ]; then
  expect_rc 78 "$bin/nebulad" --check-config "$work/k1.yaml" > "$work/k1.out" 2>&1
  expect_grep 'tls.ktls: on, but the kernel has no tls module' "$work/k1.out"
  # and the daemon itself does not start (a configuration error: exit 78)
  expect_rc 78 "$bin/nebulad" --config "$work/k1.yaml" > "$work/k1.log" 2>&1
  expect_grep 'tls.ktls: on, but the kernel has no tls module' "$work/k1.log"
else
  expect_rc 0 "$bin/nebulad" --check-config "$work/k1.yaml" > "$work/k1.out" 2>&1
fi

# run_job NAME D_MODEL: coordinator plus stages a, b whose frames may carry
# at most 1 MiB; one micro-batch of activations is 8 x 32 x D_MODEL x 4 bytes
run_job() {
  local name=$1 d=$2 cp=$base ap=$((base + 1)) bp=$((base + 2))
  base=$((base + 3))
  rm -rf "$work/run"; mkdir -p "$work/run"
  cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 1
heartbeat_timeout_s: 10
connect_timeout_s: 120
job:
  model: {n_layer: 2, d_model: $d, n_head: 4, vocab: 256, max_seq: 32, tie_embeddings: false}
  data: data.tok
  batch: 8
  seq_len: 32
  steps: 3
  micro_batches: 1
  schedule: gpipe
  clusters:
    - {name: a, address: "127.0.0.1:$ap"}
    - {name: b, address: "127.0.0.1:$bp"}
YAML
  nb_stage_yaml "$work/a.yaml" a "127.0.0.1:$ap" "127.0.0.1:$cp" 1 10 "transport: {max_frame_payload: 1MiB}"
  nb_stage_yaml "$work/b.yaml" b "127.0.0.1:$bp" "127.0.0.1:$cp" 1 10 "transport: {max_frame_payload: 1MiB}"
  "$bin/nebulad" --config "$work/coord.yaml" > "$work/coord-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/a.yaml" > "$work/a-$name.log" 2>&1 & pids+=($!)
  "$bin/nebulad" --config "$work/b.yaml" > "$work/b-$name.log" 2>&1 & pids+=($!)
  ended() { grep -q "job done\|job failed" "$work/coord-$name.log"; }
  nb_wait_for 300 ended || fail "$name: the job neither finished nor failed within 300 s"
  for s in coord a b; do "$bin/nebulactl" --socket "$work/run/$s.sock" stop >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do wait "$p" || true; done
  pids=()
}

# 8 x 32 x 256 x 4 = 256 KiB a frame: fits
run_job fits 256
expect_grep "job done" "$work/coord-fits.log"
# 8 x 32 x 1280 x 4 = 1.25 MiB a frame: over the stages' 1 MiB
run_job over 1280
expect_grep "job failed" "$work/coord-over.log"
expect_grep "over transport.max_frame_payload (1048576); not sent" "$work/a-over.log"
echo "ok transport limits refused when out of range, applied when set"

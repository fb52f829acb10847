#!/usr/bin/env bash
# A running job under attack, with real daemons on loopback over TLS:
#  1. a connection flood without a certificate (3,000 connections from 99
#     loopback addresses) against the coordinator and stage b;
#  2. a rogue Hello under stage a's name (a copy of a's key) to the
#     coordinator and to stage b, while a's real connections are alive.
# The job keeps training through both (no "job failed", steps advance), the
# rogue Hellos are refused and logged, and the refusal log stays short.
set -euo pipefail
build=${NB_BUILD:-build}
bin="$build/bin"
command -v python3 >/dev/null || { echo "skipped: python3 not found"; exit 77; }
work=$(mktemp -d /tmp/nb-pipe-attack.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$work"/*.log; do echo "--- $f"; tail -n 15 "$f"; done; exit 1; }

. tests/support/pipeline.sh
nb_pipe_prepare "$work" "$bin" || exit 1
base=$(nb_port_base 40)
cp=$base ap=$((base + 1)) bp=$((base + 2))
cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
heartbeat_interval_s: 0.2
heartbeat_timeout_s: 2
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: false}
  data: data.tok
  batch: 4
  seq_len: 16
  steps: 100000
  micro_batches: 2
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
    - {name: b, address: 127.0.0.1:$bp}
YAML
for n in a b; do
  p=$ap; [ $n = b ] && p=$bp
  nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 0.2 2
done
mkdir -p "$work/run"

"$bin/nebulad" --config "$work/coord.yaml" > "$work/c.log" 2>&1 & c=$!; pids=($c)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & a=$!; pids+=($a)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & b=$!; pids+=($b)

last_step() { grep -o "step [0-9]*/" "$work/c.log" | tail -n 1 | tr -dc 0-9; }
for _ in $(seq 1 600); do grep -q "step 1/" "$work/c.log" && break; sleep 0.1; done
grep -q "step 1/" "$work/c.log" || fail "the job did not start"
s0=$(last_step)

python3 - "$work" "$cp" "$bp" <<'PY' || fail "attack script failed"
import socket, ssl, struct, sys
work, cport, bport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

# 1. flood: connect and drop, from 99 source addresses
for port in (cport, bport):
    for i in range(1500):
        s = socket.socket()
        try:
            s.bind(("127.0.0.%d" % (2 + i % 99), 0))
            s.connect(("127.0.0.1", port))
        except OSError:
            pass
        s.close()

# 2. a rogue Hello as "a" (protobuf Frame{hello{protocol_version: 2, daemon_name: "a"}})
hello = b"\x08\x02\x12\x01a"
hdr = b"\x52" + bytes([len(hello)]) + hello
frame = b"NB\x01\x00" + struct.pack(">I", len(hdr)) + hdr
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.load_cert_chain(work + "/certs/a.pem", work + "/certs/a.key")
for port in (cport, bport):
    try:  # a daemon that is gone is for the checks below to report
        t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20))
        t.sendall(frame)
        while t.recv(4096):
            pass  # the daemon's Hello, then the close
        t.close()
    except OSError:  # ssl.SSLError is one
        pass
PY

# the job goes on: more steps, nothing failed
s1=$(last_step)
for _ in $(seq 1 300); do
  s1=$(last_step)
  [ "$s1" -gt $((s0 + 20)) ] && break
  sleep 0.1
done
[ "$s1" -gt $((s0 + 20)) ] || fail "the job stopped training (step $s0 before the attack, $s1 after)"
for f in c a b; do
  ! grep -q "job failed" "$work/$f.log" || fail "job failed in $f.log"
done
kill -0 $c && kill -0 $a && kill -0 $b || fail "a daemon exited"
grep -q "refused a second connection as 'a'" "$work/c.log" || fail "the coordinator did not refuse the rogue hello"
grep -q "refused a second connection as 'a'" "$work/b.log" || fail "stage b did not refuse the rogue hello"
# the refusal log stays short: 10 lines per 10 s window, then one summary line
n=$(grep -c "refused connection from\|lost during TLS handshake\|refused TLS from" "$work/c.log" || true)
[ "$n" -le 30 ] || fail "$n refusal lines in the coordinator's log"
echo "ok: flood and rogue hellos refused (coordinator log: $n refusal lines); training went on from step $s0 to $s1"

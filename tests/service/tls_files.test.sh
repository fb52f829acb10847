#!/usr/bin/env bash
# TLS files and unreachable peers, as an operator meets them:
#  1. `nebulad --check-config` loads the certificate, key and CA a file
#     names and refuses (exit 78) a missing, unreadable or malformed one, or
#     a key of another certificate, naming the file and the reason;
#     `--check-syntax` checks the file alone;
#  2. a stage whose coordinator is down says so in its log (at once, then
#     at most every 10 s), with the address and the reason;
#  3. a stage whose certificate is missing names the file and the reason
#     ("No such file or directory") at start and when it connects.
set -euo pipefail
build=${NB_BUILD:-build}
bin="$build/bin"
D="$bin/nebulad"
work=$(mktemp -d /tmp/nb-tls-files.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done; exit 1; }

. tests/support/pipeline.sh
nb_pipe_prepare "$work" "$bin" || exit 1
# below the ephemeral range (32768-60999), where outgoing connections of
# other tests could hold one of our ports
base=$(( 15000 + ($$ % 400) * 10 ))
cp=$base ap=$((base + 1)) down=$((base + 5))

wait_log() { # $1 file, $2 pattern, $3 seconds
  local i
  for i in $(seq 1 $(( $3 * 10 ))); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# 1. --check-config opens the TLS files
stage() { # $1 file, $2 coordinator port, $3 cert, $4 key, $5 ca
  nb_stage_yaml "$1" a "127.0.0.1:$ap" "127.0.0.1:$2" 0.2 5
  sed -i "s#^tls: .*#tls: {cert: $3, key: $4, ca: $5}#" "$1"
}
check() { # $1 cert, $2 key, $3 ca, $4 expected text after "FILE: tls: " ("" = ok)
  local f="$work/chk.yaml" out rc
  stage "$f" $cp "$1" "$2" "$3"
  set +e; out=$("$D" --check-config "$f" 2>&1); rc=$?; set -e
  if [ -z "$4" ]; then
    [ $rc -eq 0 ] && [ "$out" = ok ] || fail "1: $1 $2 $3: exit $rc '$out', expected ok"
    return
  fi
  [ $rc -eq 78 ] || fail "1: $1 $2 $3: exit $rc, expected 78 ($out)"
  [ "$out" = "$f: tls: $4" ] || fail "1: got '$out', expected '$f: tls: $4'"
  out=$("$D" --check-syntax "$f" 2>&1) || fail "1: --check-syntax refused $1 $2 $3: $out"
  [ "$out" = ok ] || fail "1: --check-syntax printed '$out'"
}
check certs/a.pem certs/a.key certs/ca.pem ""
check certs/none.pem certs/a.key certs/ca.pem "cannot load certificate $work/certs/none.pem: No such file or directory"
check certs/a.pem certs/none.key certs/ca.pem "cannot load key $work/certs/none.key: No such file or directory"
check certs/a.pem certs/a.key certs/none.pem "cannot load CA file $work/certs/none.pem: No such file or directory"
check certs/a.pem certs/b.key certs/ca.pem "key $work/certs/b.key does not match certificate $work/certs/a.pem"
echo "not a certificate" > "$work/certs/junk.pem"
check certs/junk.pem certs/a.key certs/ca.pem "cannot load certificate $work/certs/junk.pem: OpenSSL: no start line"
n=6
if [ "$(id -u)" -ne 0 ]; then
  cp "$work/certs/a.key" "$work/certs/locked.key"; chmod 000 "$work/certs/locked.key"
  check certs/a.pem certs/locked.key certs/ca.pem "cannot load key $work/certs/locked.key: Permission denied"
  n=7
else
  echo "skip: unreadable key (root reads any file)"
fi
echo "ok 1: --check-config refuses bad TLS files with the reason ($n cases)"

# 2. the coordinator is down: the stage says so, with the address and why
mkdir -p "$work/run"
stage "$work/a.yaml" $down certs/a.pem certs/a.key certs/ca.pem
"$D" --config "$work/a.yaml" > "$work/a2.log" 2>&1 & a=$!; pids=($a)
wait_log "$work/a2.log" "WARN  a coord: cannot connect to 127.0.0.1:$down: connection refused; retrying" 30 ||
  fail "2: the stage does not say that its coordinator is down"
kill $a; wait $a 2>/dev/null || true; pids=()
n=$(grep -c "cannot connect to" "$work/a2.log")
echo "ok 2: coordinator down is logged ($n line(s)): $(grep -o 'cannot connect to .*' "$work/a2.log" | head -n 1)"

# 3. the stage's certificate is missing: the reason is in the log
cat > "$work/coord.yaml" <<YAML
name: coord
role: coordinator
listen: 127.0.0.1:$cp
tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}
status_socket: run/coord.sock
connect_timeout_s: 60
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: false}
  data: data.tok
  batch: 4
  seq_len: 16
  steps: 1
  clusters:
    - {name: a, address: 127.0.0.1:$ap}
YAML
"$D" --config "$work/coord.yaml" > "$work/c3.log" 2>&1 & c=$!; pids=($c)
stage "$work/a.yaml" $cp certs/gone.pem certs/a.key certs/ca.pem
"$D" --config "$work/a.yaml" > "$work/a3.log" 2>&1 & a=$!; pids+=($a)
wait_log "$work/a3.log" "WARN  a -: TLS files: cannot load certificate .*certs/gone.pem: No such file or directory; every connection fails until this is fixed" 30 ||
  fail "3: the stage does not warn about its missing certificate at start"
wait_log "$work/a3.log" "cannot set up TLS: cannot load certificate .*certs/gone.pem: No such file or directory" 30 ||
  fail "3: the stage does not name its missing certificate and the reason when it connects"
kill $a $c; wait $a $c 2>/dev/null || true; pids=()
echo "ok 3: $(grep -o 'cannot set up TLS: .*' "$work/a3.log" | head -n 1)"

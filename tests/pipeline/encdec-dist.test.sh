#!/usr/bin/env bash
# An encoder-decoder job across two daemons over mutually authenticated TLS
# on loopback (docs/finetune.md, "Across two daemons"): the decoder's daemon
# (role coordinator with job.encoder) and the encoder's daemon (role stage,
# encdec_encoder: true) read the same job section. With fp32 on the wire
# the progress lines and both models' final weights equal nebula-train's
# single-process run bit for bit, and the encoder's weights are complete
# when the decoder's daemon reports the job done (it waits for the
# encoder's JobStatus DONE; an encoder's daemon that cannot write them fails
# the job on both). With fp16(svd(0.6)) forward and
# int8 backward (job.codecs) the job reports under a third of the wire bytes
# at nearly the same loss. An encoder's daemon whose job section differs, or
# whose texts or tokenizer differ in content (not in path), is refused (both
# digests named, and what differs); a peer with a valid certificate that is not
# the job's encoder is not admitted, and one under the encoder's name
# sending a wrong-shaped tensor (tests/pipeline/encdec_rogue.py) ends the
# job with the sender named; a peer that keeps its connection alive but
# stops sending (encdec_rogue.py stall, encdec_rogue_dec.py) ends the job
# at the step deadline, either way; no daemon crashes.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
lic=/usr/share/common-licenses
[ -r "$lic/Apache-2.0" ] && [ -r "$lic/MPL-2.0" ] || nb_skip "$lic/Apache-2.0 or MPL-2.0 missing; no text"
nb_work_init encdec-dist
nb_on_fail() { nb_tail_logs 15; }
bash scripts/gen-certs.sh "$work/certs" dec enc mallory >/dev/null || fail "certificates"
vocab="$PWD/tests/data/tokenizers/minilm"
base=$(nb_port_base 12)
mkdir -p "$work/run"

# job_section DAEMON_LINE CODECS_LINE SEED
job_section() {
  cat <<YAML
job:
  encoder:
    model: { n_layer: 1, d_model: 32, n_head: 2, vocab: 30522, max_seq: 32, norm: post, gelu: erf }
    freeze: ["*"]
    trainable: ["*.ad_*"]
    adapters: { size: 8, after: [attn, ffn] }
    output: run/enc-$4.weights
$1
  model: { n_layer: 1, d_model: 32, n_head: 2, vocab: 30522, max_seq: 8, cross_attn: true }
  adapters: { size: 4, after: [xattn] }
  output: run/dec-$4.weights
  spans:
    text: [$lic/Apache-2.0, $lic/MPL-2.0]
    tokenizer: $vocab
    max_tokens: 3
    eval_windows: 8
  seed: $3
  batch: 8
  micro_batches: 2
  seq_len: 18
  steps: 4
  log_every: 1
  optimizer: { lr: 3e-3, warmup_steps: 1, grad_clip: 0.5 }
$2
YAML
}

# write_pair RUN CODECS_LINE ENC_SEED: dec-RUN.yaml and enc-RUN.yaml
write_pair() {
  local dp=$base
  base=$((base + 2))
  {
    echo "name: dec"; echo "role: coordinator"; echo "listen: 127.0.0.1:$dp"
    echo "tls: {cert: certs/dec.pem, key: certs/dec.key, ca: certs/ca.pem}"
    echo "status_socket: run/dec-$1.sock"; echo "connect_timeout_s: 120"
    job_section "    daemon: enc" "$2" 5 "$1"
  } > "$work/dec-$1.yaml"
  {
    echo "name: enc"; echo "role: stage"; echo "encdec_encoder: true"; echo "listen: 127.0.0.1:$((dp + 1))"
    echo "tls: {cert: certs/enc.pem, key: certs/enc.key, ca: certs/ca.pem}"
    echo "coordinator: {address: \"127.0.0.1:$dp\", name: dec}"
    echo "status_socket: run/enc-$1.sock"
    job_section "    daemon: enc" "$2" "$3" "$1"
  } > "$work/enc-$1.yaml"
  echo "$dp" > "$work/port-$1"
}

start() { # $1 config, $2 log; the pid in $started
  "$bin/nebulad" --config "$work/$1.yaml" > "$work/$2.log" 2>&1 &
  started=$!
  pids+=($!)
}

wait_log() { # $1 log, $2 pattern
  local i
  for i in $(seq 1 600); do
    grep -q "$2" "$work/$1.log" && return 0
    sleep 0.1
  done
  fail "$1: no '$2' within 60 s"
}

stop() { # $1 socket name, $2 pid, $3 the exit status wanted (0: the job was done, 1: it failed)
  "$bin/nebulactl" --socket "$work/run/$1.sock" stop >/dev/null 2>&1 || true
  local rc=0
  wait "$2" || rc=$?
  [ "$rc" -eq "${3:-0}" ] || fail "$1: exited with status $rc, want ${3:-0}"
}

# the reference: nebula-train on the same job
{ echo "name: ref"; echo "role: train"; job_section "" "" 5 ref; } > "$work/ref.yaml"
"$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref.log" 2>&1 || fail "nebula-train: $(tail -3 "$work/ref.log")"

# run 1: fp32 both ways
write_pair fp32 "" 5
start dec-fp32 dec-fp32; d=$started; start enc-fp32 enc-fp32; e=$started
wait_log dec-fp32 "job done\|job failed"
# the decoder's daemon reports the job done only once the encoder's daemon
# confirmed that it applied the last commit and wrote its weights: they are
# complete at this moment, before the encoder's daemon is waited for
! grep -q "job failed" "$work/dec-fp32.log" || fail "fp32: the job failed"
cmp -s "$work/run/enc-ref.weights" "$work/run/enc-fp32.weights" ||
  fail "fp32: the encoder's weights differ, or are not complete when the decoder's daemon reports the job done"
expect_grep "job done: .*; the encoder's daemon enc: last commit applied; encoder weights written to .*enc-fp32.weights" \
  "$work/dec-fp32.log"
wait_log enc-fp32 "job done\|job failed"
! grep -q "job failed" "$work/dec-fp32.log" "$work/enc-fp32.log" || fail "fp32: the job failed"
stop dec-fp32 "$d"; stop enc-fp32 "$e"; pids=()
sed -n 's/^\(step  *[0-9]*\/[0-9]*  loss .*grad_norm [0-9.]*\)  pairs.*/\1/p' "$work/ref.log" > "$work/ref-lines.txt"
sed -n 's/.*\] \(step  *[0-9]*\/[0-9]*  loss .*grad_norm [0-9.]*\)  pairs.*/\1/p; s/.*: \(step  *[0-9]*\/[0-9]*  loss .*grad_norm [0-9.]*\)  pairs.*/\1/p' \
  "$work/dec-fp32.log" > "$work/dec-lines.txt"
[ "$(wc -l < "$work/ref-lines.txt")" -eq 4 ] || fail "nebula-train logged $(wc -l < "$work/ref-lines.txt") step lines"
cmp -s "$work/ref-lines.txt" "$work/dec-lines.txt" ||
  fail "fp32: logged losses differ: $(diff "$work/ref-lines.txt" "$work/dec-lines.txt" | head -4 | tr '\n' ';')"
cmp -s "$work/run/enc-ref.weights" "$work/run/enc-fp32.weights" || fail "fp32: the encoder's weights differ"
cmp -s "$work/run/dec-ref.weights" "$work/run/dec-fp32.weights" || fail "fp32: the decoder's weights differ"
expect_grep "job done: 4 steps .* (1.0[0-9]* of fp32)" "$work/dec-fp32.log"

# run 2: the source's codecs, fp16(svd(0.6)) forward and int8 backward
# (spelled with its default block: frames carry the canonical "int8"):
# under a third of the bytes, the last loss within 1% of fp32's
write_pair lossy "  codecs: { forward: \"fp16(svd(0.6))\", backward: \"int8(block=64)\" }" 5
start dec-lossy dec-lossy; d=$started; start enc-lossy enc-lossy; e=$started
wait_log dec-lossy "job done\|job failed"
wait_log enc-lossy "job done\|job failed"
! grep -q "job failed" "$work/dec-lossy.log" "$work/enc-lossy.log" || fail "lossy: the job failed"
stop dec-lossy "$d"; stop enc-lossy "$e"; pids=()
ratio=$(sed -n 's/.*job done: 4 steps .* (\([0-9.]*\) of fp32).*/\1/p' "$work/dec-lossy.log")
awk -v r="$ratio" 'BEGIN { exit !(r > 0.2 && r < 0.33) }' || fail "lossy: wire bytes at $ratio of fp32, want 0.2..0.33"
l32=$(sed -n 's/.*job done: 4 steps .* -> \([0-9.]*\);.*/\1/p' "$work/dec-fp32.log")
llo=$(sed -n 's/.*job done: 4 steps .* -> \([0-9.]*\);.*/\1/p' "$work/dec-lossy.log")
awk -v a="$l32" -v b="$llo" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d < 0.01 * a) }' ||
  fail "lossy: last loss $llo, fp32's $l32: more than 1% apart"
[ -s "$work/run/enc-lossy.weights" ] || fail "lossy: no encoder weights"

# run 3: the encoder's daemon reads another seed: refused, both digests named
write_pair seed "" 6
start dec-seed dec-seed; d=$started; start enc-seed enc-seed; e=$started
wait_log enc-seed "job failed"
expect_grep "dec sent a job with digest '[0-9a-f-]*'; the job section of .* gives '[0-9a-f-]*': the settings differ" \
  "$work/enc-seed.log"
wait_log dec-seed "job failed"
stop dec-seed "$d" 1; stop enc-seed "$e" 1; pids=()

# runs 3b-3d: the digest covers the texts' and the tokenizer's bytes, not
# their paths. The encoder's daemon reads its first text from another
# directory: an equal copy runs; the same file name with one word changed
# is refused, and so is a tokenizer whose vocab.txt differs in one token
mkdir -p "$work/same" "$work/other" "$work/tok"
cp "$lic/Apache-2.0" "$work/same/Apache-2.0"
sed '0,/License/s//Licence/' "$lic/Apache-2.0" > "$work/other/Apache-2.0"
cp "$vocab"/* "$work/tok/"
sed -i '2000s/.*/nebulatoken/' "$work/tok/vocab.txt"
# inputs RUN SED_EXPR: a pair whose encoder's job section is edited by SED_EXPR
inputs() {
  write_pair "$1" "" 5
  sed -i "$2" "$work/enc-$1.yaml"
  start "dec-$1" "dec-$1"; d=$started; start "enc-$1" "enc-$1"; e=$started
}
inputs same "s#$lic/Apache-2.0#$work/same/Apache-2.0#"
wait_log dec-same "job done\|job failed"
wait_log enc-same "job done\|job failed"
! grep -q "job failed" "$work/dec-same.log" "$work/enc-same.log" || fail "same texts elsewhere: the job failed"
stop dec-same "$d"; stop enc-same "$e"; pids=()
cmp -s "$work/run/enc-fp32.weights" "$work/run/enc-same.weights" || fail "same texts elsewhere: other weights"
inputs text "s#$lic/Apache-2.0#$work/other/Apache-2.0#"
wait_log enc-text "job failed"
expect_grep "dec sent a job with digest '[0-9a-f-]*'; .* gives '[0-9a-f-]*': the texts' contents (job.spans.text) differ" \
  "$work/enc-text.log"
expect_grep "text $work/other/Apache-2.0 [0-9a-f]\{16\};" "$work/enc-text.log"
wait_log dec-text "job failed"
stop dec-text "$d" 1; stop enc-text "$e" 1; pids=()
inputs tok "s#tokenizer: $vocab#tokenizer: $work/tok#"
wait_log enc-tok "job failed"
expect_grep "the tokenizer's files (job.spans.tokenizer) differ" "$work/enc-tok.log"
wait_log dec-tok "job failed"
stop dec-tok "$d" 1; stop enc-tok "$e" 1; pids=()

# run 4: hostile peers against a waiting decoder's daemon
write_pair rogue "" 5
start dec-rogue dec-rogue; d=$started
wait_log dec-rogue "waiting for the encoder's daemon"
port=$(cat "$work/port-rogue")
rc=0; python3 tests/pipeline/encdec_rogue.py "$work/certs" mallory "$port" > "$work/rogue-mallory.log" 2>&1 || rc=$?
[ "$rc" -eq 3 ] || fail "mallory got a job (status $rc): $(cat "$work/rogue-mallory.log")"
rc=0; python3 tests/pipeline/encdec_rogue.py "$work/certs" enc "$port" > "$work/rogue-enc.log" 2>&1 || rc=$?
[ "$rc" -eq 0 ] || fail "the rogue encoder did not get its job (status $rc): $(cat "$work/rogue-enc.log")"
wait_log dec-rogue "job failed"
expect_grep "refused the encoder output from enc: shape 72 x 31, expected 72 x 32 (B\*S, C)" "$work/dec-rogue.log"
expect_grep "refused TLS from .*wrong_name" "$work/dec-rogue.log"
stop dec-rogue "$d" 1; pids=()

# run 5: an encoder's daemon whose decoder's daemon never answers gives up
# after connect_timeout_s, in order
sed 's/^connect_timeout_s: .*//' "$work/enc-rogue.yaml" > "$work/enc-alone.yaml"
sed -i 's#run/enc-rogue.sock#run/enc-alone.sock#' "$work/enc-alone.yaml"
echo "connect_timeout_s: 2" >> "$work/enc-alone.yaml"
start enc-alone enc-alone; e=$started
wait_log enc-alone "job failed"
expect_grep "no job from the decoder's daemon dec within 2 s (connect_timeout_s)" "$work/enc-alone.log"
stop enc-alone "$e" 1; pids=()

# run 5b: the encoder's daemon cannot write its weights after the last
# commit (its output's folder is a file): the decoder's daemon, waiting for
# its confirmation, does not report the job done; the job fails on both
write_pair nowrite "" 5
: > "$work/run/file"
sed -i 's#output: run/enc-nowrite.weights#output: run/file/enc.weights#' "$work/enc-nowrite.yaml"
start dec-nowrite dec-nowrite; d=$started; start enc-nowrite enc-nowrite; e=$started
wait_log dec-nowrite "job done\|job failed"
expect_grep "job failed: the encoder's daemon enc failed: .*run/file/enc.weights" "$work/dec-nowrite.log"
! grep -q "job done" "$work/dec-nowrite.log" || fail "nowrite: the decoder's daemon reported the job done"
stop dec-nowrite "$d" 1; stop enc-nowrite "$e" 1; pids=()

# runs 6 and 7, side by side: a peer whose connection lives (it sends
# heartbeats) while its work is stuck ends the job at the step deadline,
# 4 x heartbeat_timeout_s, with the peer, what was awaited and the deadline
# named. Run 6: an encoder's daemon (tests/pipeline/encdec_rogue.py stall)
# that sends its first output and then nothing. Run 7: a decoder's daemon
# (tests/pipeline/encdec_rogue_dec.py, with the digest of run 1's job) that
# sends the job and then nothing.
write_pair stall "" 5
printf 'heartbeat_interval_s: 0.5\nheartbeat_timeout_s: 2\n' >> "$work/dec-stall.yaml"
write_pair stalldec "" 5
printf 'heartbeat_interval_s: 0.5\nheartbeat_timeout_s: 2\n' >> "$work/enc-stalldec.yaml"
digest=$(sed -n 's/.*job digest \([^;]*\);.*/\1/p' "$work/dec-fp32.log")
[ -n "$digest" ] || fail "no job digest in the decoder's log of run 1"
: > "$work/rogue-dec.log"
python3 tests/pipeline/encdec_rogue_dec.py "$work/certs" dec "$(cat "$work/port-stalldec")" "$digest" \
  > "$work/rogue-dec.log" 2>&1 &
r7=$!; pids+=($r7)
start dec-stall dec-stall; d=$started
wait_log rogue-dec "listening"
start enc-stalldec enc-stalldec; e=$started
wait_log dec-stall "waiting for the encoder's daemon"
python3 tests/pipeline/encdec_rogue.py "$work/certs" enc "$(cat "$work/port-stall")" stall \
  > "$work/rogue-stall.log" 2>&1 &
r6=$!; pids+=($r6)
wait_log dec-stall "job failed"
expect_grep "job failed: the encoder's daemon enc sent no encoder output of step 1 micro-batch 1 within 8 s (4 x heartbeat_timeout_s)" \
  "$work/dec-stall.log"
wait_log enc-stalldec "job failed"
expect_grep "job failed: the decoder's daemon dec sent no gradient of step 1 micro-batch 0 within 8 s (4 x heartbeat_timeout_s)" \
  "$work/enc-stalldec.log"
stop dec-stall "$d" 1; stop enc-stalldec "$e" 1
rc=0; wait "$r6" || rc=$?
[ "$rc" -eq 0 ] || fail "the stalling encoder: status $rc: $(cat "$work/rogue-stall.log")"
expect_grep "closed by the daemon" "$work/rogue-stall.log"
rc=0; wait "$r7" || rc=$?; pids=()
[ "$rc" -eq 0 ] || fail "the stalling decoder: status $rc: $(cat "$work/rogue-dec.log")"
expect_grep "got 1 tensors; closed by the peer" "$work/rogue-dec.log"
echo "encdec-dist: ok"

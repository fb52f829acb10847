#!/usr/bin/env bash
# Multi-generator ELECTRA across three daemons over mutually authenticated
# TLS on loopback (docs/electra.md, "Across daemons"): the discriminator's
# daemon (role coordinator with job.electra) and two generator daemons
# (electra_generator: true), one on the GPL-3 text and one on the
# Apache-2.0 text, each reading its own token file. The loss lines of every
# step and the discriminator's final weights equal those of the
# single-process reference (nebula-electra) on the same job, bit for bit.
# Run 2 restarts a generator: it is killed (SIGKILL) after it sent two
# batches, started again, rebuilds its generator from its seed, replays the
# two steps without sending them and goes on; the job ends with the same
# weights; then the discriminator's daemon is killed and restarted: the job
# starts over and ends equal too. Then a generator whose token file holds IDs the discriminator
# lacks: the job fails with that generator named, and no daemon crashes.
# Last, hostile peers (tests/pipeline/electra_rogue.py) against a running
# job: one with a valid certificate that is no generator of the job is not
# admitted; one under generator gpl's name sending a batch that claims
# apache's index, one whose batch holds a token ID beyond the vocabulary:
# each ends the job with the sender named, and the daemon exits in order.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"
nb_work_init electra-dist
nb_on_fail() { nb_tail_logs 15; }
bash scripts/gen-certs.sh "$work/certs" disc gpl apache mallory >/dev/null || fail "certificates"
"$bin/nebula-tokenize" /usr/share/common-licenses/GPL-3 "$work/gpl.tok" >/dev/null || fail "tokenize GPL-3"
"$bin/nebula-tokenize" /usr/share/common-licenses/Apache-2.0 "$work/apache.tok" >/dev/null || fail "tokenize Apache-2.0"
base=$(nb_port_base 20)
steps=12
gen_model="{n_layer: 1, d_model: 16, n_head: 2, vocab: 257, max_seq: 32, causal: false, head: mlm"
# the discriminator and generator gpl have the token shift (docs/model.md):
# a daemon that dropped it would log other losses than nebula-electra

# job_section VOCAB WITH_DATA: the job; WITH_DATA (yes/no) names each
# generator's token file (the single-process reference reads both; the
# discriminator's daemon reads none, each generator daemon its own)
job_section() {
  local gd= ad=
  if [ "$2" = yes ]; then gd="data: gpl.tok, "; ad="data: apache.tok, "; fi
  cat <<YAML
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, vocab: $1, max_seq: 32, causal: false, head: tokcls, n_classes: 2,
          token_shift: true}
  seed: 7
  batch: 5
  seq_len: 32
  steps: $steps
  optimizer: {lr: 2e-3, min_lr: 2e-4, warmup_steps: 3, grad_clip: 1.0}
  log_every: 1
  output: run/disc.weights
  electra:
    generators:
      - {name: gpl, ${gd}sequences: 3, model: $gen_model, token_shift: true}, optimizer: {lr: 3e-3, warmup_steps: 2}}
      - {name: apache, ${ad}sequences: 2, seed: 99, model: $gen_model}, optimizer: {lr: 3e-3, warmup_steps: 2}}
YAML
}

write_configs() { # $1 discriminator vocab
  local dp=$base
  base=$((base + 3))
  { echo "name: ref"; echo "role: train"; job_section "$1" yes; } > "$work/ref.yaml"
  sed -i 's#output: run/disc.weights#output: run/ref.weights#' "$work/ref.yaml"
  {
    echo "name: disc"; echo "role: coordinator"; echo "listen: 127.0.0.1:$dp"
    echo "tls: {cert: certs/disc.pem, key: certs/disc.key, ca: certs/ca.pem}"
    echo "status_socket: run/disc.sock"; echo "heartbeat_interval_s: 1"; echo "heartbeat_timeout_s: 5"
    echo "connect_timeout_s: 120"
    job_section "$1" no
    echo "  recovery_timeout_s: 120"
  } > "$work/disc.yaml"
  local n p=$((dp + 1))
  for n in gpl apache; do
    cat > "$work/$n.yaml" <<YAML
name: $n
role: stage
electra_generator: true
listen: "127.0.0.1:$p"
tls: {cert: certs/$n.pem, key: certs/$n.key, ca: certs/ca.pem}
coordinator: {address: "127.0.0.1:$dp", name: disc}
data: $n.tok
status_socket: run/$n.sock
heartbeat_interval_s: 1
heartbeat_timeout_s: 5
YAML
    p=$((p + 1))
  done
}

start() { # $1 daemon, $2 log name
  "$bin/nebulad" --config "$work/$1.yaml" > "$work/$2.log" 2>&1 &
  eval "pid_$1=\$!"
  pids+=($!)
}

done_or_failed() { # $1 log
  ! grep -q "job failed\|: job\.\|start failed" "$work/$1.log" || fail "$1: job failed"
  grep -q "job done" "$work/$1.log"
}

stop_all() { # $1 run name
  local s
  for s in disc gpl apache; do
    "$bin/nebulactl" --socket "$work/run/$s.sock" stop >/dev/null || fail "$1: stop $s"
  done
  for s in $pid_disc $pid_gpl $pid_apache; do wait "$s" || fail "$1: a daemon exited with status $?"; done
  pids=()
}

compare() { # $1 run name: the loss lines and the weights equal the reference's
  sed -n 's/^\(step  *[0-9]*\/[0-9]* .*\)  tokens\/s.*/\1/p' "$work/ref.log" > "$work/ref-lines.txt"
  sed -n 's/.*\] \(step  *[0-9]*\/[0-9]* .*\)  tokens\/s.*/\1/p; s/.*: \(step  *[0-9]*\/[0-9]*  gen .*\)  tokens\/s.*/\1/p' \
    "$work/disc-$1.log" | sort -u -k2,2n > "$work/disc-lines.txt"
  [ "$(wc -l < "$work/ref-lines.txt")" -eq $steps ] || fail "$1: nebula-electra logged $(wc -l < "$work/ref-lines.txt") lines"
  cmp -s "$work/ref-lines.txt" "$work/disc-lines.txt" ||
    fail "$1: logged losses differ: $(diff "$work/ref-lines.txt" "$work/disc-lines.txt" | head -4 | tr '\n' ';')"
  cmp -s "$work/run/ref.weights" "$work/run/disc.weights" || fail "$1: the discriminator's weights differ from nebula-electra's"
}

mkdir -p "$work/run"
write_configs 257
"$bin/nebula-electra" --config "$work/ref.yaml" > "$work/ref.log" 2>&1 || fail "nebula-electra"

# run 1: three daemons, every step's losses and the final weights equal
start disc disc-plain; start gpl gpl-plain; start apache apache-plain
nb_wait_for 120 done_or_failed disc-plain || fail "plain: no 'job done' within 120 s"
"$bin/nebulactl" --socket "$work/run/disc.sock" metrics > "$work/metrics.txt" || fail "plain: metrics"
grep -q "^nebula_electra_batches_received_total $((2 * steps))$" "$work/metrics.txt" ||
  fail "plain: the discriminator did not count $((2 * steps)) batches: $(grep electra "$work/metrics.txt")"
nb_wait_for 30 grep -q "job done" "$work/gpl-plain.log" || fail "plain: generator gpl not done"
stop_all plain
compare plain
echo "ok plain: $steps steps, losses and weights equal to nebula-electra's"

# run 2: generator apache is killed after sending two batches (the job waits
# for gpl, not started yet), restarted, and replays its two steps
rm -f "$work/run/disc.weights"
start disc disc-restart; start apache apache-1
received() {
  "$bin/nebulactl" --socket "$work/run/disc.sock" metrics 2>/dev/null | grep -q '^nebula_electra_batches_received_total 2$'
}
nb_wait_for 60 received || fail "restart: apache's first two batches did not arrive"
kill -9 "$pid_apache"
wait "$pid_apache" 2>/dev/null || true
nb_wait_for 30 grep -q "generator gone" "$work/disc-restart.log" || fail "restart: the discriminator did not see apache go"
start apache apache-2; start gpl gpl-restart
nb_wait_for 120 done_or_failed disc-restart || fail "restart: no 'job done' within 120 s"
expect_grep "generator back; it resends from step 3" "$work/disc-restart.log"
expect_grep "rebuilding it\|replaying" "$work/apache-2.log"
stop_all restart
compare restart
echo "ok restart: a killed generator rejoined and replayed; losses and weights equal"

# run 2b: the discriminator's daemon is killed after gpl sent two batches
# and started again: the job starts over (a new job id) and gpl, which keeps
# its last two batches, re-sends them; the result is the same
rm -f "$work/run/disc.weights"
start disc disc-dkill; start gpl gpl-drestart
nb_wait_for 60 received || fail "disc restart: gpl's first two batches did not arrive"
kill -9 "$pid_disc"
wait "$pid_disc" 2>/dev/null || true
nb_wait_for 30 grep -q "lost the discriminator's daemon" "$work/gpl-drestart.log" || fail "disc restart: gpl did not see it go"
start disc disc-drestart; start apache apache-drestart
nb_wait_for 120 done_or_failed disc-drestart || fail "disc restart: no 'job done' within 120 s"
stop_all drestart
compare drestart
echo "ok disc restart: the job started over and ended equal to nebula-electra's"

# run 3: the discriminator's vocabulary (200) lacks byte IDs the generators send
write_configs 200
start disc disc-vocab; start gpl gpl-vocab; start apache apache-vocab
nb_wait_for 60 grep -q "job failed" "$work/disc-vocab.log" || fail "vocab: the job did not fail"
expect_grep "generator '\(gpl\|apache\)'.*vocab" "$work/disc-vocab.log"
rc=0; wait "$pid_disc" || rc=$?
[ "$rc" -eq 1 ] || fail "vocab: the discriminator's daemon exited with status $rc, want 1 (a failed job)"
# a generator that failed exits 1; one that never got its job waits
# (connect_timeout_s) and is stopped here
for s in gpl apache; do "$bin/nebulactl" --socket "$work/run/$s.sock" stop >/dev/null 2>&1 || true; done
for s in $pid_gpl $pid_apache; do rc=0; wait "$s" || rc=$?; [ "$rc" -le 1 ] || fail "vocab: a generator died with status $rc"; done
pids=()
echo "ok vocab: refused with the generator named: $(grep -o "generator '[a-z]*'[^;]*vocab [0-9]*" "$work/disc-vocab.log" | head -1)"

# run 4: hostile peers
write_configs 257
command -v python3 >/dev/null || nb_skip "python3 not found (runs 1-3 passed)"
rogue() { python3 tests/pipeline/electra_rogue.py "$work/certs" "$@"; }
disc_port=$(sed -n 's/^listen: 127.0.0.1:\([0-9]*\)$/\1/p' "$work/disc.yaml")
hostile() { # $1 name, $2 rogue's name, $3 its index, $4 the bad ID (< 200: fine), $5 what the refusal says
  start disc "disc-$1"; start apache "apache-$1"
  nb_wait_for 30 grep -q "state waiting" "$work/disc-$1.log" || fail "$1: the discriminator did not start"
  rc=0; rogue "$2" "$disc_port" "$3" 3 32 "$4" > "$work/rogue-$1.log" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || fail "$1: the rogue did not get its job (status $rc): $(cat "$work/rogue-$1.log")"
  nb_wait_for 30 grep -q "job failed" "$work/disc-$1.log" || fail "$1: the job did not fail"
  expect_grep "job failed: generator 'gpl'.*$5" "$work/disc-$1.log"
  rc=0; wait "$pid_disc" || rc=$?
  [ "$rc" -eq 1 ] || fail "$1: the discriminator's daemon exited with status $rc, want 1 (a failed job, in order)"
  rc=0; wait "$pid_apache" || rc=$?
  [ "$rc" -eq 1 ] || fail "$1: generator apache exited with status $rc, want 1"
  expect_grep "the discriminator's daemon ended the job: generator 'gpl'" "$work/apache-$1.log"
  pids=()
  echo "ok $1: $(grep -o "job failed: .*" "$work/disc-$1.log" | head -1)"
}
# not a generator of the job: its TLS connection is refused, the job waits on
start disc disc-stranger
nb_wait_for 30 grep -q "state waiting" "$work/disc-stranger.log" || fail "stranger: the discriminator did not start"
rc=0; rogue mallory "$disc_port" 0 3 32 1 > "$work/rogue-stranger.log" 2>&1 || rc=$?
[ "$rc" -eq 3 ] || fail "stranger: mallory got a job (status $rc): $(cat "$work/rogue-stranger.log")"
expect_grep "refused TLS from .*wrong_name" "$work/disc-stranger.log"
expect_no_grep "job failed" "$work/disc-stranger.log"
"$bin/nebulactl" --socket "$work/run/disc.sock" stop >/dev/null || fail "stranger: stop"
wait "$pid_disc" || fail "stranger: the discriminator's daemon exited with status $?"
pids=()
echo "ok stranger: $(grep -m 1 -o "refused TLS from .*" "$work/disc-stranger.log")"
hostile borrowed gpl 1 7 "claims to come from generator 1"
hostile bad-id gpl 0 300 "sequence 0 position 5: token ID 300 outside the discriminator's vocabulary (0..256)"

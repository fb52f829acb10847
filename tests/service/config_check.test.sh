#!/usr/bin/env bash
# nebulad --check-config: every example passes; every class of config error
# exits 78 (EX_CONFIG) with "FILE:LINE:COL: key: message" on stderr and
# starts nothing; usage errors exit 2; --help and --version work.
set -u
B=${NB_BUILD:-build}/bin
D=$B/nebulad
C=$B/nebulactl
. tests/support/assert.sh
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# The examples name TLS files of their target hosts: check the files alone.
for f in config/demo/*.yaml config/2-cluster/*.yaml config/3-cluster/*.yaml config/electra/discriminator.yaml \
         config/electra/generator-*.yaml; do
  out=$("$D" --check-syntax "$f" 2>&1) || fail "$f: $out"
  [ "$out" = ok ] || fail "$f printed '$out'"
done
# The trainer's example is role train: valid YAML for the loader, refused by nebulad.
out=$("$D" --check-config config/train/tiny-gpt.yaml 2>&1); rc=$?
[ $rc -eq 78 ] && [[ $out == *"role train is run by nebula-train"* ]] || fail "train role: rc $rc '$out'"

# expect_err FILE-CONTENT EXPECTED-STDERR
n=0
expect_err() {
  n=$((n+1)); f="$tmp/c$n.yaml"; printf '%s' "$1" > "$f"
  out=$("$D" --check-config "$f" 2>&1); rc=$?
  [ $rc -eq 78 ] || fail "case $n: exit $rc, want 78 ($out)"
  [ "$out" = "$f:$2" ] || fail "case $n: got '$out' want '$f:$2'"
  # --config must refuse the same file the same way, before binding anything.
  out2=$("$D" --config "$f" 2>&1); rc2=$?
  [ $rc2 -eq 78 ] && [ "$out2" = "$out" ] || fail "case $n with --config: exit $rc2 '$out2'"
}
STAGE='name: s1
role: stage
listen: 127.0.0.1:0
tls: {cert: a, key: b, ca: c}
coordinator: {address: "127.0.0.1:1", name: c}
'
expect_err "${STAGE}listne: x
" "6:1: listne: unknown key; did you mean 'listen'?"
expect_err "${STAGE}heartbeat_timeout_s: soon
" "6:22: heartbeat_timeout_s: wrong type: expected a number, got 'soon'"
expect_err "${STAGE}connect_timeout_s: -1
" "6:20: connect_timeout_s: out of bounds: must be between 0 and 86400, got -1"
expect_err 'name: s1
role: stage
listen: 127.0.0.1:0
' "1:1: tls: missing required key (role stage)"
expect_err "${STAGE}job: {}
" "6:6: job: a stage daemon gets its job from the coordinator; only the encoder's daemon of an encoder-decoder job (encdec_encoder: true) reads its own job section"
# ELECTRA across daemons: a generator daemon needs its own text; the
# discriminator's daemon has no clusters and reads no generator's text
expect_err "${STAGE}electra_generator: true
" "1:1: data: missing: an ELECTRA generator daemon (electra_generator: true) trains on its own token file"
ELECTRA='name: c
role: coordinator
listen: 127.0.0.1:0
tls: {cert: a, key: b, ca: c}
job:
  model: {n_layer: 1, d_model: 16, n_head: 2, vocab: 257, head: tokcls, n_classes: 2}
  batch: 2
  seq_len: 8
  steps: 1
  electra:
    generators:
'
expect_err "${ELECTRA}      - {name: g, sequences: 2, model: {n_layer: 1, d_model: 8, n_head: 2, vocab: 257, head: mlm}}
  clusters:
    - {name: a, address: \"127.0.0.1:1\"}
" "14:5: job.clusters: not used by an electra job: the generators are the daemons named in job.electra.generators[].name (docs/electra.md)"
expect_err "${ELECTRA}      - {name: g, data: g.tok, sequences: 2, model: {n_layer: 1, d_model: 8, n_head: 2, vocab: 257, head: mlm}}
" "12:19: job.electra.generators[0].data: not allowed for role coordinator (only for train)"
# keys of a pipeline job that an electra job would ignore: refused
GEN='      - {name: g, sequences: 2, model: {n_layer: 1, d_model: 8, n_head: 2, vocab: 257, head: mlm}}
'
expect_err "${ELECTRA}${GEN}  freeze: [wte]
" "13:11: job.freeze: not used by an electra job: the discriminator and every generator train all their tensors (docs/electra.md)"
expect_err "${ELECTRA}${GEN}  codecs: {forward: fp16}
" "13:11: job.codecs: not used by an electra job: the generators send token IDs (codec electra-wire), no activations or gradients (docs/electra.md)"
expect_err "${ELECTRA}${GEN}  planner: {enabled: false}
" "13:12: job.planner: not used by an electra job: there is no pipeline to plan (one micro-batch per generator) (docs/electra.md)"
expect_err "${ELECTRA}${GEN}  adapters: {size: 2}
" "13:13: job.adapters: not used by an electra job: its models train from scratch, without adapters (docs/electra.md)"
# bounds a generator daemon accepts: refused by the coordinator's config, not at job time
expect_err "${ELECTRA/steps: 1/steps: 100000001}      - {name: g, sequences: 2, model: {n_layer: 1, d_model: 8, n_head: 2, vocab: 257, head: mlm}}
" "9:10: job.steps: an electra job across daemons runs at most 100000000 steps (what a generator daemon accepts), got 100000001"
expect_err "${ELECTRA/seq_len: 8/seq_len: 65537}      - {name: g, sequences: 2, model: {n_layer: 1, d_model: 8, n_head: 2, vocab: 257, head: mlm, max_seq: 65537}}
" "8:12: job.seq_len: an electra job across daemons takes at most 65536 tokens per sequence (what a generator daemon accepts), got 65537"
expect_err "${ELECTRA}      - {name: g, sequences: 2, model: {n_layer: 1, d_model: 8, n_head: 2, vocab: 257, head: mlm, max_seq: 70000}}
" "12:108: job.electra.generators[0].model.max_seq: a generator daemon accepts at most 65536, got 70000"
expect_err 'name: c
role: coordinator
listen: 127.0.0.1:0
tls: {cert: a, key: b, ca: c}
job:
  model: {n_layer: 4, d_model: 64, n_head: 4, vocab: 256, tie_embeddings: false}
  batch: 8
  seq_len: 16
  steps: 1
  clusters:
    - {name: a, address: "h:1", layers: 0-1}
    - {name: b, address: "h:2", layers: 2-2}
' "12:41: job.clusters[1].layers: layer ranges do not cover the model exactly: they end at block 2 but the model has 4 layers (0-3)"
expect_err "${STAGE}  bad indent
" "6:3: yaml: did not find expected key while parsing a block mapping"

out=$("$D" --check-config "$tmp/missing.yaml" 2>&1); rc=$?
[ $rc -eq 78 ] && [ "$out" = "$tmp/missing.yaml: cannot read config file: No such file or directory" ] \
  || fail "missing file: exit $rc '$out'"
# (an unreadable file: config_unreadable.test.sh, which needs a uid a file mode can refuse)
# Nothing was started: no status socket appeared for any case.
[ -z "$(find "$tmp" -name '*.sock')" ] || fail "a socket was created"

"$D" >/dev/null 2>&1; [ $? -eq 2 ] || fail "no args should exit 2"
"$D" --bogus >/dev/null 2>&1; [ $? -eq 2 ] || fail "bad option should exit 2"
"$D" --help | grep -q -- '--check-config' || fail "--help"
"$D" --version | grep -Eq '^nebulad [0-9]+\.[0-9]+' || fail "--version"
"$C" --help | grep -q 'exit status' || fail "nebulactl --help"
"$C" --version | grep -Eq '^nebulactl [0-9]' || fail "nebulactl --version"
"$C" >/dev/null 2>&1; [ $? -eq 2 ] || fail "nebulactl without command should exit 2"
"$C" --socket "$tmp/none.sock" status >/dev/null 2>&1; [ $? -eq 3 ] || fail "nebulactl cannot connect should exit 3"
echo "config checks ok ($n error cases)"

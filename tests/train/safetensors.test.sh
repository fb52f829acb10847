#!/usr/bin/env bash
# safetensors out and in, as an operator runs it: nebula-train trains a tiny
# GPT and a tiny BERT, nebula-weights exports them (GPT-2, BERT and Nebula
# names), an independent reader (tests/train/st_reader.py: json + struct)
# compares every value with the weights files; import brings the files back
# bit for bit (from the file's own metadata, and from a directory with a
# Hugging Face config.json); broken files and unsupported configs are
# refused with exit 2, the file, the tensor or setting, and the reason.
set -euo pipefail
build=${NB_BUILD:-build}
here=$(cd "$(dirname "$0")" && pwd)
train="$build/bin/nebula-train" tok="$build/bin/nebula-tokenize" nw="$build/bin/nebula-weights"
[ -x "$train" ] && [ -x "$tok" ] && [ -x "$nw" ] || { echo "missing $train, $tok or $nw"; exit 1; }
command -v python3 >/dev/null || { echo "SKIP: python3 not installed: the independent reader cannot run"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
# expect_refused RC_FILE ERR_FILE STRING...: exit 2 and each string in the message
expect_refused() {
  local rc=$1 err=$2; shift 2
  cat "$err"
  [ "$rc" -eq 2 ] || fail "exit $rc, expected 2"
  for s in "$@"; do grep -qF -- "$s" "$err" || fail "'$s' not in the message"; done
}
"$tok" /usr/share/common-licenses/GPL-3 "$work/gpl3.tok" > /dev/null
for m in gpt bert; do
  if [ $m = gpt ]; then model="vocab: 256, norm: pre, causal: true, head: lm, tie_embeddings: true"
  else model="vocab: 260, norm: post, causal: false, head: mlm, tie_embeddings: false"; fi
  cat > "$work/$m.yaml" <<YAML
name: $m
role: train
devices: [cpu]
job:
  model: { n_layer: 2, d_model: 32, n_head: 2, d_ff: 64, max_seq: 16, $model }
  seed: 3
  data: gpl3.tok
  batch: 4
  seq_len: 16
  steps: 8
  optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 2, grad_clip: 1.0 }
  log_every: 8
  output: $m.weights
YAML
  "$train" --config "$work/$m.yaml" > /dev/null
done

# GPT-2 names (the default for a pre-LN model): every value, Conv1D transposed
"$nw" export "$work/gpt.weights" "$work/gpt.safetensors" | grep -q "28 tensors, .* gpt2 names" || fail "export"
python3 "$here/st_reader.py" check "$work/gpt.weights" "$work/gpt.safetensors" gpt2 > "$work/check.txt" ||
  { cat "$work/check.txt"; fail "GPT-2 export differs"; }
tail -1 "$work/check.txt"
grep -q '^h.1.attn.c_attn.weight  *\[32, 96\] ' "$work/check.txt" || fail "c_attn.weight not [in, out]"
"$nw" show "$work/gpt.safetensors" > "$work/show.txt"
grep -q 'safetensors, 28 tensors, 25856 elements' "$work/show.txt" || fail "show: no summary"
grep -q 'metadata nebula.names: gpt2' "$work/show.txt" || fail "show: no metadata"
grep -q 'h.0.attn.c_attn.weight  *F32  *\[32, 96\]' "$work/show.txt" || fail "show: no tensor line"
"$nw" export --names nebula "$work/gpt.weights" "$work/gpt-nb.safetensors" > /dev/null
python3 "$here/st_reader.py" check "$work/gpt.weights" "$work/gpt-nb.safetensors" nebula | tail -1
# BERT names (post-LN default): q, k, v split, zero token types
"$nw" export --names gpt2 "$work/bert.weights" "$work/x.safetensors" 2> "$work/err.txt" && fail "gpt2 names on BERT"
grep -q "GPT-2 names need a pre-LN causal model" "$work/err.txt" || fail "no reason for gpt2 names on BERT"
# the untied mlm head's lm.w has no BERT name: refused with the tensor named
set +e; "$nw" export "$work/bert.weights" "$work/x.safetensors" 2> "$work/err.txt"; rc=$?; set -e
expect_refused $rc "$work/err.txt" "Nebula's tensor 'lm.w' has no bert name"
sed -i 's/tie_embeddings: false/tie_embeddings: true/' "$work/bert.yaml"
"$train" --config "$work/bert.yaml" > /dev/null
"$nw" export "$work/bert.weights" "$work/bert.safetensors" | grep -q "bert names" || fail "bert export"
python3 "$here/st_reader.py" check "$work/bert.weights" "$work/bert.safetensors" bert > "$work/check.txt" ||
  { cat "$work/check.txt"; fail "BERT export differs"; }
tail -1 "$work/check.txt"
grep -q '^encoder.layer.1.attention.self.value.weight  *\[32, 32\] ' "$work/check.txt" || fail "no value weight"

# import: from the file's metadata, and from a directory with config.json
for f in gpt gpt-nb bert; do
  w=gpt; [ $f = bert ] && w=bert
  "$nw" import "$work/$f.safetensors" "$work/back.weights" 2> "$work/notes.txt" > /dev/null
  cmp "$work/back.weights" "$work/$w.weights" || fail "$f: import differs from the trained weights"
done
grep -q "row 0 of 'embeddings.token_type_embeddings.weight' added to every position embedding" "$work/notes.txt" ||
  fail "no note on the token types"
mkdir "$work/hf"
# the Hugging Face way: no Nebula metadata, the model comes from config.json
python3 - "$work/gpt.safetensors" "$work/hf/model.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
(n,) = struct.unpack_from("<Q", b, 0)
h = json.loads(b[8:8 + n])
del h["__metadata__"]
t = json.dumps(h).encode()
open(sys.argv[2], "wb").write(struct.pack("<Q", len(t)) + t + b[8 + n:])
PY
cat > "$work/hf/config.json" <<'JSON'
{ "model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_inner": 64, "n_positions": 16,
  "vocab_size": 256, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new" }
JSON
"$nw" import "$work/hf" "$work/back.weights" | grep -q "gpt2 names, pre-LN, 2 layers" || fail "dir import"
cmp "$work/back.weights" "$work/gpt.weights" || fail "directory import differs"
"$nw" compare --tol 0 "$work/gpt.weights" "$work/back.weights" | tail -1
"$nw" show "$work/back.weights" | grep -q "h1.qkv.w" || fail "show"

# job.init: a run starting from the exported file equals one starting from
# the weights file (and from the Hugging Face directory), and its first loss
# is the trained model's, not a seeded one's
sed 's/output: gpt.weights/output: scratch.weights/; s/log_every: 8/log_every: 1/' "$work/gpt.yaml" > "$work/scratch.yaml"
"$train" --config "$work/scratch.yaml" > "$work/scratch.txt"
for src in gpt.weights gpt.safetensors gpt-nb.safetensors hf/model.safetensors; do
  out=init-$(echo "$src" | tr / -).weights
  sed "s/output: scratch.weights/output: $out\n  init: ${src//\//\\/}/" "$work/scratch.yaml" > "$work/init.yaml"
  "$train" --config "$work/init.yaml" > "$work/init.txt" 2> "$work/init-err.txt"
  grep -q "weights from .*$src" "$work/init.txt" || fail "job.init $src not announced"
done
cat "$work/init.yaml"
for src in gpt.safetensors gpt-nb.safetensors hf-model.safetensors; do
  cmp "$work/init-gpt.weights.weights" "$work/init-$src.weights" || fail "job.init from $src differs from the weights file"
done
cmp -s "$work/init-gpt.weights.weights" "$work/scratch.weights" && fail "job.init changed nothing"
l0=$(sed -n 's/^step  *1\/8  loss \([0-9.]*\).*/\1/p' "$work/scratch.txt")
l1=$(sed -n 's/^step  *1\/8  loss \([0-9.]*\).*/\1/p' "$work/init.txt")
echo "first loss: seeded $l0, from job.init $l1"
awk -v a="$l0" -v b="$l1" 'BEGIN { exit !(b < a - 0.1) }' || fail "job.init: first loss $l1 not below the seeded $l0"
# another model: refused (exit 78) with the field named
sed 's/d_ff: 64/d_ff: 128/' "$work/init.yaml" > "$work/init-bad.yaml"
set +e; "$train" --config "$work/init-bad.yaml" > /dev/null 2> "$work/err.txt"; rc=$?; set -e
cat "$work/err.txt"
[ $rc -eq 78 ] || fail "job.init of another model: exit $rc, expected 78"
grep -q "d_ff is 64 in the pretrained model, 128 in this job's model" "$work/err.txt" || fail "d_ff not named"

# token shift (job.model.token_shift) has no Hugging Face equivalent: a job
# with it starts from the Hugging Face directory all the same (the same
# tensors), its weights file records it, export with GPT-2 names is refused
# naming it, Nebula's names keep it, and a job without it refuses the file
sed 's/output: init-hf-model.safetensors.weights/output: ts.weights/; s/tie_embeddings: true }/tie_embeddings: true, token_shift: true }/' \
  "$work/init.yaml" > "$work/ts.yaml"
grep -q "token_shift: true" "$work/ts.yaml" && grep -q "init: hf/model.safetensors" "$work/ts.yaml" || fail "ts.yaml: $(cat "$work/ts.yaml")"
"$train" --config "$work/ts.yaml" > /dev/null || fail "job.init from a Hugging Face directory into a token-shift model"
"$nw" show "$work/ts.weights" | grep -q "token shift: a quarter of the embedding channels" || fail "show does not name token shift"
set +e; "$nw" export "$work/ts.weights" "$work/x.safetensors" 2> "$work/err.txt"; rc=$?; set -e
expect_refused $rc "$work/err.txt" "with token_shift (job.model.token_shift) has no Hugging Face equivalent"
"$nw" export --names nebula "$work/ts.weights" "$work/ts-nb.safetensors" > /dev/null || fail "export with Nebula's names"
"$nw" import "$work/ts-nb.safetensors" "$work/ts-back.weights" > /dev/null 2>&1 || fail "import with Nebula's names"
cmp "$work/ts-back.weights" "$work/ts.weights" || fail "token shift or a value lost through Nebula's names"
for src in ts.weights ts-nb.safetensors; do
  sed "s|init: .*|init: $work/$src|" "$work/init.yaml" > "$work/init-ts.yaml"
  set +e; "$train" --config "$work/init-ts.yaml" > /dev/null 2> "$work/err.txt"; rc=$?; set -e
  [ $rc -eq 78 ] || fail "job.init of a token-shift $src into a model without it: exit $rc, expected 78"
  grep -q "token_shift is true in the .*, false in this" "$work/err.txt" || fail "token_shift not named: $(cat "$work/err.txt")"
done

# the erf GELU and another eps are model settings: imported, recorded in
# the weights file, and a job of the default model refuses that file
sed -i 's/"gelu_new"/"gelu"/; s/1e-05/1e-12/' "$work/hf/config.json"
"$nw" import "$work/hf" "$work/erf.weights" > "$work/out.txt" || fail "import of an erf-GELU config failed"
grep -q "ln_eps 1e-12, gelu erf" "$work/out.txt" || fail "import does not name the settings: $(cat "$work/out.txt")"
"$nw" show "$work/erf.weights" > "$work/out.txt" || fail "show of an erf-GELU weights file failed"
grep -q "ln_eps 1e-12, gelu erf" "$work/out.txt" || fail "show does not name the settings: $(cat "$work/out.txt")"
sed "s|init: .*|init: $work/erf.weights|" "$work/init.yaml" > "$work/init-erf.yaml"
set +e; "$train" --config "$work/init-erf.yaml" > /dev/null 2> "$work/err.txt"; rc=$?; set -e
[ $rc -eq 78 ] || fail "job.init of an erf-GELU file into a tanh model: exit $rc, expected 78"
grep -q "ln_eps is 1e-12 in the file, 1e-05 in this model" "$work/err.txt" || fail "ln_eps not named: $(cat "$work/err.txt")"

# refusals: settings the family lacks, a shape that does not fit, broken files
sed -i 's/"gelu"/"gelu_fast"/; s/1e-12/0/' "$work/hf/config.json"
set +e; "$nw" import "$work/hf" "$work/x.weights" 2> "$work/err.txt"; rc=$?; set -e
expect_refused $rc "$work/err.txt" "config.json: not supported by Nebula's model family yet" \
  "activation_function 'gelu_fast'" "layer_norm_epsilon 0"
sed -i 's/"gelu_fast"/"gelu_new"/; s/"layer_norm_epsilon": 0/"layer_norm_epsilon": 1e-05/; s/"n_inner": 64/"n_inner": 128/' "$work/hf/config.json"
set +e; "$nw" import "$work/hf" "$work/x.weights" 2> "$work/err.txt"; rc=$?; set -e
expect_refused $rc "$work/err.txt" "tensor 'h.0.mlp.c_fc.weight' has shape [32, 64], the model expects [32, 128]"
sz=$(stat -c %s "$work/gpt.safetensors")
head -c $((sz - 1)) "$work/gpt.safetensors" > "$work/hf/model.safetensors"
set +e; "$nw" import "$work/hf" "$work/x.weights" 2> "$work/err.txt"; rc=$?; set -e
expect_refused $rc "$work/err.txt" "model.safetensors: tensor 'ln_f.bias'" "reach past the end of the data"
head -c 100 "$work/gpt.safetensors" > "$work/hf/model.safetensors"
set +e; "$nw" import "$work/hf" "$work/x.weights" 2> "$work/err.txt"; rc=$?; set -e
expect_refused $rc "$work/err.txt" "model.safetensors: header length" "reaches past the end of the file"
printf '\xff\xff\xff\xff\xff\xff\xff\x7f{}' > "$work/hf/model.safetensors"
set +e; "$nw" import "$work/hf" "$work/x.weights" 2> "$work/err.txt"; rc=$?; set -e
expect_refused $rc "$work/err.txt" "is over the limit of 104857600 bytes"
[ ! -e "$work/x.weights" ] || fail "a refused import left a file"
! ls "$work" | grep -q '\.tmp$' || fail "temporary file left"
echo "ok"

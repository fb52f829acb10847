#!/usr/bin/env bash
# nebula-electra as an operator runs it: two generators on two licence
# texts and one discriminator in one process; progress lines with every
# loss, the discriminator's weights file, identical output and weights for
# identical runs, and a bad config refused with exit 78 and the key or the
# generator named.
set -euo pipefail
. tests/support/assert.sh
build=${NB_BUILD:-build}
el="$build/bin/nebula-electra" tok="$build/bin/nebula-tokenize"
[ -x "$el" ] && [ -x "$tok" ] || fail "missing $el or $tok"
for t in GPL-3 Apache-2.0; do
  [ -r "/usr/share/common-licenses/$t" ] || nb_skip "/usr/share/common-licenses/$t missing; no training text"
done
nb_work_init electra
"$tok" /usr/share/common-licenses/GPL-3 "$work/gpl.tok" > /dev/null
"$tok" /usr/share/common-licenses/Apache-2.0 "$work/apache.tok" > /dev/null
write_config() { # $1 file, $2 discriminator vocab, $3 job.batch
  cat > "$1" <<YAML
name: e
role: train
devices: [cpu]
job:
  model: { n_layer: 1, d_model: 32, n_head: 2, vocab: $2, max_seq: 16, causal: false, head: tokcls, n_classes: 2 }
  seed: 5
  batch: $3
  seq_len: 16
  steps: 12
  optimizer: { lr: 2e-3, warmup_steps: 2 }
  log_every: 4
  output: disc.weights
  electra:
    generators:
      - name: gpl
        data: gpl.tok
        sequences: 2
        model: { n_layer: 1, d_model: 8, n_head: 2, vocab: 257, max_seq: 16, causal: false, head: mlm }
      - name: apache
        data: apache.tok
        sequences: 4
        model: { n_layer: 1, d_model: 8, n_head: 2, vocab: 257, max_seq: 16, causal: false, head: mlm }
YAML
}
write_config "$work/e.yaml" 257 6
"$el" --config "$work/e.yaml" > "$work/run1.txt"
cat "$work/run1.txt"
[ "$(grep -c '^step ' "$work/run1.txt")" -eq 4 ] || fail "want 4 progress lines (steps 1, 4, 8, 12)"
expect_grep '^step    12/12  gen gpl loss [0-9.]* gen apache loss [0-9.]*  disc loss [0-9.]* acc [0-9.]*  replaced [0-9.]*%  wire 1\.[0-9]* B/token' "$work/run1.txt"
expect_grep 'discriminator weights written to' "$work/run1.txt"
[ "$(head -c 4 "$work/disc.weights")" = NBWT ] || fail "the weights file does not start with NBWT"
cp "$work/disc.weights" "$work/disc1.weights"
"$el" --config "$work/e.yaml" > "$work/run2.txt"
diff <(sed 's/tokens\/s.*//; s/ in [0-9.]* s;/;/' "$work/run1.txt") \
     <(sed 's/tokens\/s.*//; s/ in [0-9.]* s;/;/' "$work/run2.txt") || fail "two runs with the same seeds differ"
cmp -s "$work/disc.weights" "$work/disc1.weights" || fail "two runs wrote different weights"
# bad configs: exit 78, the key or the generator named
write_config "$work/bad1.yaml" 257 7
expect_rc 78 "$el" --config "$work/bad1.yaml" 2> "$work/bad1.txt" > /dev/null
expect_grep 'job.batch: must equal the sum' "$work/bad1.txt"
write_config "$work/bad2.yaml" 200 6
expect_rc 78 "$el" --config "$work/bad2.yaml" 2> "$work/bad2.txt" > /dev/null
expect_grep "generator 'gpl'.*vocabulary 256" "$work/bad2.txt"
expect_rc 78 "$el" --config config/train/tiny-gpt.yaml 2> "$work/bad3.txt" > /dev/null
expect_grep 'job.electra section' "$work/bad3.txt"
echo "nebula-electra: ok"

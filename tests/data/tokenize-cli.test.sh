#!/usr/bin/env bash
# nebula-tokenize with Hugging Face tokenizers, as a user runs it: the token
# file of sample.txt holds the reference IDs (tests/data/tokenizers/*.ids,
# from the `tokenizers` package) after its 32-byte header, with the
# tokenizer's vocabulary in the header; --decode gives the text back
# (byte-level BPE: byte for byte; WordPiece: the reference decoder's text);
# text that is not UTF-8 and a token beyond the vocabulary are refused with
# the file, the offset and the reason; the byte tokenizer still works.
set -euo pipefail
build=${NB_BUILD:-build}
tok="$build/bin/nebula-tokenize"
data=tests/data/tokenizers
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$tok" ] || fail "missing $tok"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# IDs of a width-2 token file, one per line; header fields by offset.
ids() { od -An -tu2 -j32 -v "$1" | tr -s ' ' '\n' | grep -v '^$' || true; }
u32() { od -An -tu4 -j"$2" -N4 "$1" | tr -d ' '; }

"$tok" --help | grep -q -- '--tokenizer DIR TEXT OUTPUT' || fail "--help does not mention --tokenizer"
"$tok" --help | grep -q -- '--decode' || fail "--help does not mention --decode"

for kind in wordpiece:minilm bpe:bpe bpe:bpe.tokenizer.json; do
  name=${kind%%:*} src=${kind#*:}
  "$tok" --tokenizer "$data/$src" "$data/sample.txt" "$work/$name.tok" > "$work/out.txt" \
    || fail "$src: tokenizing failed: $(cat "$work/out.txt")"
  ids "$work/$name.tok" > "$work/$name.ids"
  n=$(diff "$work/$name.ids" "$data/$name.ids" | grep -c '^[<>]' || true)
  echo "$src: $(wc -l < "$work/$name.ids") tokens, $n lines differ from the reference"
  [ "$n" -eq 0 ] || fail "$src: token IDs differ from the reference"
done
[ "$(u32 "$work/wordpiece.tok" 12)" = 30522 ] || fail "wordpiece header vocabulary is not 30522"
[ "$(u32 "$work/bpe.tok" 12)" = 2257 ] || fail "bpe header vocabulary is not 2257"

"$tok" --decode --tokenizer "$data/bpe" "$work/bpe.tok" "$work/bpe.txt" > /dev/null || fail "bpe decode failed"
cmp "$work/bpe.txt" "$data/sample.txt" || fail "bpe decode does not give the text back"
"$tok" --decode --tokenizer "$data/minilm" "$work/wordpiece.tok" "$work/wp.txt" > /dev/null || fail "wordpiece decode failed"
cmp "$work/wp.txt" "$data/wordpiece.decoded.txt" || fail "wordpiece decode differs from the reference decoder"

# Not UTF-8: refused, no output file.
printf 'first line\nsecond \xc3\xa9 line \xff\n' > "$work/bad.txt"
if "$tok" --tokenizer "$data/minilm" "$work/bad.txt" "$work/bad.tok" 2> "$work/err"; then fail "non-UTF-8 text accepted"; fi
grep -q 'bad.txt: byte offset 26 (line 2, character 15): byte 0xff is not UTF-8' "$work/err" \
  || fail "unexpected message: $(cat "$work/err")"
[ ! -e "$work/bad.tok" ] || fail "an output file was written for refused text"

# A token file of the wrong tokenizer: refused at the first ID beyond the vocabulary.
if "$tok" --decode --tokenizer "$data/bpe" "$work/wordpiece.tok" "$work/x.txt" 2> "$work/err"; then
  fail "decoding IDs beyond the vocabulary succeeded"
fi
grep -q "wordpiece.tok: offset [0-9]*: token [0-9]* is [0-9]*, beyond the tokenizer's vocabulary of 2257" "$work/err" \
  || fail "unexpected message: $(cat "$work/err")"

# A broken vocabulary line names file and line.
mkdir "$work/brokenvocab"
printf '[PAD]\n[UNK]\nhello\n\nworld\n' > "$work/brokenvocab/vocab.txt"
if "$tok" --tokenizer "$work/brokenvocab" "$data/sample.txt" "$work/x.tok" 2> "$work/err"; then fail "broken vocab accepted"; fi
grep -q 'brokenvocab/vocab.txt: line 4: empty line' "$work/err" || fail "unexpected message: $(cat "$work/err")"

# The byte tokenizer is unchanged.
"$tok" "$data/sample.txt" "$work/bytes.tok" > /dev/null || fail "byte tokenizer failed"
[ "$(u32 "$work/bytes.tok" 12)" = 256 ] || fail "byte tokenizer vocabulary is not 256"
[ "$(od -An -tu8 -j16 -N8 "$work/bytes.tok" | tr -d ' ')" = "$(stat -c %s "$data/sample.txt")" ] \
  || fail "byte tokenizer count is not the file size"
echo "ok"

#!/usr/bin/env bash
# nebula-weights checks a file's header against the file's length before it
# allocates anything: a 200-byte file whose header describes a 355M-parameter
# model (1.4 GB of floats) is refused at once, with both lengths named, in
# little memory; so are a truncated and a padded copy of a real weights file,
# which show and compare read as before.
set -euo pipefail
build=${NB_BUILD:-build}
bin="$build/bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$bin/nebula-tokenize" /usr/share/common-licenses/GPL-3 "$work/d.tok" >/dev/null || fail "nebula-tokenize"
cat > "$work/t.yaml" <<YAML
name: t
role: train
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: true}
  data: d.tok
  batch: 4
  seq_len: 16
  steps: 2
  output: t.weights
YAML
"$bin/nebula-train" --config "$work/t.yaml" >/dev/null || fail "nebula-train"
"$bin/nebula-weights" show "$work/t.weights" > "$work/show.txt" || fail "show of a good file"
grep -q "embedding + blocks 0-1 + head, 25856 parameters" "$work/show.txt" || fail "show: $(cat "$work/show.txt")"
grep -q "^  h1.fc.w *64 x 32 *rms [0-9.e-]*$" "$work/show.txt" || fail "show lacks h1.fc.w: $(cat "$work/show.txt")"
"$bin/nebula-weights" compare "$work/t.weights" "$work/t.weights" | grep -q "largest relative difference 0 .*: equal" \
  || fail "compare of a file with itself"

# the header of a GPT-2-medium-sized model (24 x 1024, vocab 50257), then zeros up to 200 bytes
python3 - "$work/big.weights" <<'PY'
import struct, sys
h = struct.pack('<4sI15iIQ', b'NBWT', 1, 24, 1024, 16, 4096, 50257, 1024, 1, 0, 0, 0, 1, 1, 0, 24, 1,
                292, 354823168)
open(sys.argv[1], 'wb').write(h + b'\0' * (200 - len(h)))
PY
want="the file is 200 bytes, but its header describes 1419307936 bytes (292 tensors, 354823168 parameters)"
# GNU time measures the peak RSS (package time, from scripts/install-deps.sh)
[ -x /usr/bin/time ] || fail "/usr/bin/time is missing: run scripts/install-deps.sh"
timed=(/usr/bin/time -f "maxrss_kb %M" -o "$work/time.txt")
rc=0
"${timed[@]}" timeout 120 "$bin/nebula-weights" show "$work/big.weights" > "$work/big.txt" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "show of the 200-byte file exited $rc, not 2: $(cat "$work/big.txt")"
grep -qF "$want" "$work/big.txt" || fail "show did not compare the lengths first: $(cat "$work/big.txt")"
[ -s "$work/time.txt" ] || fail "GNU time wrote no peak RSS"
# against a baseline (the small good file): sanitizer builds start larger
kb=$(awk '/maxrss_kb/ {print $2}' "$work/time.txt")
"${timed[@]}" "$bin/nebula-weights" show "$work/t.weights" > /dev/null || fail "show of a good file"
base_kb=$(awk '/maxrss_kb/ {print $2}' "$work/time.txt")
echo "show of the 200-byte file: peak RSS ${kb} kB (a 100 KB good file: ${base_kb} kB)"
[ "$kb" -lt $((base_kb + 65536)) ] || fail "show of the 200-byte file used ${kb} kB, ${base_kb} kB for a good file"
rc=0
"$bin/nebula-weights" compare "$work/t.weights" "$work/big.weights" > "$work/big.txt" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -qF "$want" "$work/big.txt" || fail "compare with the 200-byte file: $(cat "$work/big.txt")"

len=$(stat -c %s "$work/t.weights")
head -c $((len - 4)) "$work/t.weights" > "$work/short.weights"
{ cat "$work/t.weights"; printf 'xxxx'; } > "$work/long.weights"
for f in short long; do
  rc=0
  "$bin/nebula-weights" show "$work/$f.weights" > "$work/$f.txt" 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || fail "show of the $f file exited $rc"
  grep -q "bytes, but its header describes $len bytes" "$work/$f.txt" || fail "$f file: $(cat "$work/$f.txt")"
done
echo "nebula-weights: ok"

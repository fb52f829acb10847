#!/usr/bin/env bash
# nebula-weights on checkpoints as an operator uses them: checkpoints lists
# a root's step directories (complete or not, files, bytes, age); verify
# passes a good checkpoint and refuses, with exit 1 and the file and
# tensor named, a one-bit flip, a truncated file, a missing file and a NaN
# or a 1e38 written with every digest consistent; merge writes one file
# that restores (nebula-train resumes from it bit for bit); export takes a
# checkpoint and writes what it writes from the weights file.
set -euo pipefail
. tests/support/assert.sh
build=${NB_BUILD:-build}
train="$build/bin/nebula-train" tok="$build/bin/nebula-tokenize" nw="$build/bin/nebula-weights"
[ -x "$train" ] && [ -x "$tok" ] && [ -x "$nw" ] || fail "missing $train, $tok or $nw"
command -v python3 >/dev/null || nb_skip "python3 is needed to damage files consistently"
nb_work_init ckpt-tools
"$tok" /usr/share/common-licenses/GPL-3 "$work/d.tok" > /dev/null
cat > "$work/t.yaml" <<YAML
name: t
role: train
devices: [cpu]
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: true}
  seed: 3
  data: d.tok
  batch: 4
  seq_len: 16
  steps: 12
  output: t.weights
YAML
"$train" --config "$work/t.yaml" > /dev/null 2>&1
cp "$work/t.weights" "$work/ref.weights"
"$train" --config "$work/t.yaml" --stop-after 8 --checkpoint "$work/r" --checkpoint-every 4 > /dev/null 2>&1
mkdir "$work/r/step-00000012" && echo partial > "$work/r/step-00000012/model.safetensors.tmp"

"$nw" checkpoints "$work/r" > "$work/list.txt"
cat "$work/list.txt"
expect_grep "3 step directories" "$work/list.txt"
expect_grep "step       12  incomplete  files  1  bytes            8  age [0-9]* s" "$work/list.txt"
expect_grep "step        8  complete    files  2  bytes  *[0-9]*  age [0-9]* s" "$work/list.txt"
expect_grep "step        4  complete" "$work/list.txt"
expect_rc 2 "$nw" checkpoints "$work/nothere" > /dev/null 2>&1

"$nw" verify "$work/r" > "$work/v.txt"
cat "$work/v.txt"
expect_grep "step-00000008: ok: step 8 (8 AdamW updates), 1 file, [0-9]* bytes, 77568 values checked" "$work/v.txt"

# damage, each in a copy; verify says what and where, exit 1
damage() { # NAME PYTHON-SNIPPET (f: the file's bytes, a bytearray; reseal: keep digests consistent)
  rm -rf "$work/$1" && cp -r "$work/r/step-00000008" "$work/$1"
  python3 - "$work/$1" "$2" <<'PY'
import hashlib, json, struct, sys
d, snippet = sys.argv[1], sys.argv[2]
path = d + '/model.safetensors'
f = bytearray(open(path, 'rb').read())
n = struct.unpack('<Q', f[:8])[0]
hdr = json.loads(f[8:8 + n])
def put(name, i, value):  # element i of tensor name as a float32
    b = hdr[name]['data_offsets'][0]
    struct.pack_into('<f', f, 8 + n + b + 4 * i, value)
def reseal(data=True):  # data_sha256 (same length in the header) and the manifest
    global f
    if data:
        old = hdr['__metadata__']['data_sha256'].encode()
        new = hashlib.sha256(bytes(f[8 + n:])).hexdigest().encode()
        at = f.find(old, 8, 8 + n)
        f[at:at + 64] = new
    m = json.load(open(d + '/manifest.json'))
    m['files'][0]['sha256'] = hashlib.sha256(bytes(f)).hexdigest()
    m['files'][0]['bytes'] = len(f)
    json.dump(m, open(d + '/manifest.json', 'w'))
exec(snippet)
open(path, 'wb').write(bytes(f))
PY
}
refused() { # NAME PATTERN
  expect_rc 1 "$nw" verify "$work/$1" > "$work/$1.out" 2> "$work/$1.err"
  cat "$work/$1.err"
  expect_grep "$2" "$work/$1.err"
  expect_grep ": BAD" "$work/$1.out"
}
damage flip 'f[len(f) - 100] ^= 0x04'
refused flip "flip/model.safetensors: SHA-256 .*: the file is corrupt"
damage flip2 'f[len(f) - 100] ^= 0x04; reseal(data=False)'
refused flip2 "flip2/model.safetensors: the data section's SHA-256 is .*: the data is corrupt"
damage nan "put('h1.fc.w', 5, float('nan')); reseal()"
refused nan "nan/model.safetensors: tensor 'h1.fc.w': element 5 is not finite"
damage big "put('adamw.v.wpe', 7, 1e38); reseal()"
refused big "big/model.safetensors: tensor 'adamw.v.wpe': element 7 is 1e+38, beyond"
damage short 'f = f[:-4]'
refused short "short/model.safetensors: [0-9]* bytes, the manifest lists [0-9]*: the file is truncated"
damage gone 'import os; os.unlink(path); sys.exit(0)'
refused gone "gone/model.safetensors: No such file or directory (the manifest lists it)"
damage badname "m = json.load(open(d + '/manifest.json')); m['files'][0]['name'] = '../x'; json.dump(m, open(d + '/manifest.json', 'w'))"
refused badname "files\[0\].name \"../x\""

# merge: one file holding every tensor; nebula-train resumes from it exactly
"$nw" merge "$work/r/step-00000008" "$work/merged" > "$work/merge.txt"
cat "$work/merge.txt"
[ "$(ls "$work/merged")" = "$(printf 'manifest.json\nmodel.safetensors')" ] || fail "merge wrote: $(ls "$work/merged")"
"$nw" verify "$work/merged" > /dev/null || fail "the merged checkpoint does not verify"
expect_rc 2 "$nw" merge "$work/merged" "$work/merged" > /dev/null 2>&1
rm -f "$work/t.weights"
"$train" --config "$work/t.yaml" --resume "$work/merged" > "$work/resume.txt" 2>&1
expect_grep "resumed from .*merged after 8 steps" "$work/resume.txt"
cmp "$work/t.weights" "$work/ref.weights" || fail "resuming from the merged checkpoint changed the final weights"

# export: a checkpoint's weights as Hugging Face safetensors, the same bytes
# as the export of a weights file holding the same parameters
"$train" --config "$work/t.yaml" --checkpoint "$work/end" > /dev/null 2>&1
"$nw" export "$work/end" "$work/from-ckpt.safetensors" > /dev/null
"$nw" export "$work/t.weights" "$work/from-weights.safetensors" > /dev/null
cmp "$work/from-ckpt.safetensors" "$work/from-weights.safetensors" || fail "export of a checkpoint differs"
expect_rc 2 "$nw" export "$work/nan" "$work/x.safetensors" > /dev/null 2> "$work/err.txt"
expect_grep "h1.fc.w" "$work/err.txt"
echo "checkpoint tools: ok"

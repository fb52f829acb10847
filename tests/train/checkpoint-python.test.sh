#!/usr/bin/env bash
# A checkpoint opens from Python with the safetensors package: every
# tensor by its global name (parameters, adamw.m.*, adamw.v.*), its
# __metadata__ (format, step, data_sha256 equal to the SHA-256 of the data
# section) and the manifest's digest of the file; one tensor's values equal
# what nebula-weights dump prints, bit for bit.
# Skipped (exit 77) where the safetensors package or numpy is missing.
set -euo pipefail
. tests/support/assert.sh
build=${NB_BUILD:-build}
train="$build/bin/nebula-train" tok="$build/bin/nebula-tokenize" nw="$build/bin/nebula-weights"
[ -x "$train" ] && [ -x "$tok" ] && [ -x "$nw" ] || fail "missing $train, $tok or $nw"
command -v python3 >/dev/null || nb_skip "python3 is not installed"
python3 -c 'import numpy, safetensors.numpy' 2>/dev/null || nb_skip "the safetensors package (with numpy) is not importable"
nb_work_init ckpt-python
"$tok" /usr/share/common-licenses/GPL-3 "$work/d.tok" > /dev/null
cat > "$work/t.yaml" <<YAML
name: t
role: train
devices: [cpu]
job:
  model: {n_layer: 2, d_model: 32, n_head: 4, d_ff: 64, vocab: 256, max_seq: 16, tie_embeddings: true}
  seed: 9
  data: d.tok
  batch: 4
  seq_len: 16
  steps: 5
YAML
"$train" --config "$work/t.yaml" --checkpoint "$work/r" > /dev/null 2>&1
d="$work/r/step-00000005"
"$nw" dump "$d" h1.fc.w > "$work/dump.txt"
python3 - "$d" "$work/dump.txt" <<'PY'
import hashlib, json, struct, sys
import numpy as np
from safetensors import safe_open
d, dump = sys.argv[1], sys.argv[2]
path = d + '/model.safetensors'
m = json.load(open(d + '/manifest.json'))
assert m['format'] == 'nebula-checkpoint' and m['step'] == 5, m
raw = open(path, 'rb').read()
assert hashlib.sha256(raw).hexdigest() == m['files'][0]['sha256'], 'manifest digest'
assert len(raw) == m['files'][0]['bytes']
with safe_open(path, framework='np') as f:
    md = f.metadata()
    keys = set(f.keys())
    w = f.get_tensor('h1.fc.w')
    mv = f.get_tensor('adamw.v.h1.fc.w')
n = struct.unpack('<Q', raw[:8])[0]
assert md['format'] == 'nebula-checkpoint' and md['step'] == '5' and md['optim_steps'] == '5', md
assert md['data_sha256'] == hashlib.sha256(raw[8 + n:]).hexdigest(), 'data_sha256'
assert json.loads(md['model'])['n_layer'] == 2
for name in ('wte', 'wpe', 'h0.qkv.w', 'lnf.b', 'adamw.m.wte', 'adamw.v.h0.ln1.w'):
    assert name in keys, name
assert len(keys) == 3 * 28, len(keys)
assert w.dtype == np.float32 and w.shape == (64, 32), (w.dtype, w.shape)
assert (mv >= 0).all(), 'second moments are not negative'
lines = open(dump).read().split('\n')
assert lines[0] == '# h1.fc.w model.safetensors [64, 32]', lines[0]
want = np.array([float(x) for x in lines[1:] if x], dtype=np.float32)
assert want.shape == (64 * 32,)
assert np.array_equal(w.reshape(-1).view(np.uint32), want.view(np.uint32)), 'values differ'
print('python: %d tensors, h1.fc.w equal bit for bit (rms %.4g)' % (len(keys), float(np.sqrt((w ** 2).mean()))))
PY
echo "checkpoint from python: ok"

#!/usr/bin/env bash
# A GPT trained by nebula-train and exported with GPT-2 names loads in
# PyTorch with the safetensors package (safetensors.torch.load_file), every
# value equal to the weights file's; where transformers is importable too,
# GPT2LMHeadModel takes the file with no missing or unexpected weights, and
# checkpoints written by transformers' save_pretrained (a GPT-2, a BERT with
# the tanh GELU and eps 1e-5, and one with BERT's erf GELU and eps 1e-12) go
# through import and export and give
# PyTorch the same outputs as the originals.
# Skipped (exit 77) where torch or safetensors is not importable.
set -euo pipefail
build=${NB_BUILD:-build}
here=$(cd "$(dirname "$0")" && pwd)
train="$build/bin/nebula-train" tok="$build/bin/nebula-tokenize" nw="$build/bin/nebula-weights"
[ -x "$train" ] && [ -x "$tok" ] && [ -x "$nw" ] || { echo "missing $train, $tok or $nw"; exit 1; }
command -v python3 >/dev/null || { echo "SKIP: python3 not installed"; exit 77; }
python3 -c 'import torch, safetensors.torch' 2>/dev/null ||
  { echo "SKIP: torch or safetensors is not importable: the PyTorch load is not checked"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$tok" /usr/share/common-licenses/GPL-3 "$work/gpl3.tok" > /dev/null
cat > "$work/t.yaml" <<YAML
name: t
role: train
devices: [cpu]
job:
  model: { n_layer: 2, d_model: 32, n_head: 2, d_ff: 128, vocab: 256, max_seq: 16, causal: true,
           norm: pre, head: lm, tie_embeddings: true }
  seed: 5
  data: gpl3.tok
  batch: 4
  seq_len: 16
  steps: 8
  optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 2, grad_clip: 1.0 }
  log_every: 8
  output: t.weights
YAML
"$train" --config "$work/t.yaml" > /dev/null
"$nw" export "$work/t.weights" "$work/model.safetensors" > /dev/null
python3 "$here/st_reader.py" torch "$work/t.weights" "$work/model.safetensors" gpt2 | tail -2
python3 - "$work/model.safetensors" "$build/bin/nebula-generate" <<'PY'
import subprocess, sys
try:
    import transformers
except ImportError:
    print("transformers is not importable: GPT2LMHeadModel load not checked (the safetensors load above was)")
    sys.exit(0)
import torch
from safetensors.torch import load_file
cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_inner=128, n_positions=16, vocab_size=256,
                              activation_function="gelu_new", layer_norm_epsilon=1e-5)
m = transformers.GPT2LMHeadModel(cfg)
sd = {"transformer." + k: v for k, v in load_file(sys.argv[1]).items()}
missing, unexpected = m.load_state_dict(sd, strict=False)
missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias")) and k != "lm_head.weight"]
assert not missing and not unexpected, (missing, unexpected)
print("GPT2LMHeadModel (transformers %s) took every tensor" % transformers.__version__)
# greedy generation: transformers' generate (float64) and nebula-generate on the same file
m.tie_weights()
m = m.double().eval()
prompt = [84, 104, 105, 115]  # "This"
with torch.no_grad():
    want = m.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0,
                      attention_mask=torch.ones(1, len(prompt), dtype=torch.long))[0].tolist()
out = subprocess.run([sys.argv[2], "--prompt-ids", " ".join(map(str, prompt)), "--max-new", "12",
                      "--temperature", "0", sys.argv[1]], capture_output=True, text=True, check=True).stdout
got = [int(x) for x in out.replace("|", " ").split()]
assert got == want, ("nebula-generate", got, "transformers", want)
print("greedy generation: nebula-generate equals transformers' generate: %s" % got[len(prompt):])
PY
python3 - "$work" "$nw" <<'PY'
import os, subprocess, sys
try:
    import transformers
except ImportError:
    print("transformers is not importable: save_pretrained round trips not checked")
    sys.exit(0)
import torch
from safetensors.torch import load_file
work, nw = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
models = {
    "gpt2": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=96, activation_function="gelu_new",
        layer_norm_epsilon=1e-5)),
    "bert": (transformers.BertModel, transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=96,
        max_position_embeddings=16, hidden_act="gelu_new", layer_norm_eps=1e-5)),
    "bert-erf": (transformers.BertModel, transformers.BertConfig(  # BERT's own settings
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=96,
        max_position_embeddings=16, hidden_act="gelu", layer_norm_eps=1e-12)),
}
worst = 0.0
for name, (cls, cfg) in models.items():
    ref = cls(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for n, p in ref.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n or "ln_" in n:
                p.add_(0.1 * torch.randn_like(p))
    d = os.path.join(work, "hf-" + name)
    ref.save_pretrained(d)
    subprocess.run([nw, "import", d, os.path.join(d, "n.weights")], check=True)
    subprocess.run([nw, "export", os.path.join(d, "n.weights"), os.path.join(d, "back.safetensors")], check=True)
    back = cls(cfg).eval()
    sd = load_file(os.path.join(d, "back.safetensors"))
    if name == "gpt2":
        sd = {"transformer." + k: v for k, v in sd.items()}
    missing, unexpected = back.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))
               and k != "lm_head.weight" and not k.startswith("pooler.")]
    assert not missing and not unexpected, (name, missing, unexpected)
    if name.startswith("bert"):  # the pooler is not exported: take it over to compare pooled outputs too
        back.pooler.load_state_dict(ref.pooler.state_dict())
    ids = torch.randint(0, 96, (3, 16))
    with torch.no_grad():
        a = ref(ids)[0]
        b = back(ids)[0]
    rel = ((a - b).abs().max() / a.abs().max()).item()
    worst = max(worst, rel)
    print("%s: save_pretrained -> import -> export -> PyTorch: max relative output difference %.3g" % (name, rel))
    assert rel <= 1e-6, name
print("bench safetensors_roundtrip_max_rel_diff %.3g" % worst)
PY
echo ok

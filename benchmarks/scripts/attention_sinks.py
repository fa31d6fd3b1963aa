"""Do attention sinks form? Per layer, the mean attention weight a query puts on the first token.

For each checkpoint: windows of the trained length from the corpus' test split; each layer's q, k
(its own projections and RoPE, from the input the layer sees); causal softmax weights; the mean
weight on key 0 over heads and queries at positions >= 32, next to the uniform 1/(t+1) a query
spreading its attention evenly would give. StreamingLLM (Xiao et al. 2024, Figure 2) finds the
first token taking most of the attention from the third layer on in Llama-2.

    python benchmarks/scripts/attention_sinks.py CKPT [CKPT ...] > sinks.json
"""

from __future__ import annotations

import json
import sys

import torch

from longctx.models.io import load_lm
from longctx.ops.common.checks import default_scale
from longctx.tasks.corpus import load_text
from longctx.tasks.tokenizer import ByteTokenizer


@torch.no_grad()
def sink_weights(path: str, n_windows: int = 16, first_query: int = 32) -> dict:
    model, meta = load_lm(path, device="cuda" if torch.cuda.is_available() else "cpu")
    tok = ByteTokenizer.from_dict(meta["tokenizer"])
    L = meta["seq_len"]
    data = tok.encode(load_text(meta["corpus"], "test"))
    starts = torch.linspace(0, len(data) - L - 1, n_windows).long()
    n_text = L - 1 if tok.sink_token else L
    x = data[starts[:, None] + torch.arange(n_text)]
    if tok.sink_token:
        x = torch.cat([torch.full((n_windows, 1), tok.sink_id), x], dim=1)
    inputs = {}
    hooks = [b.mixer.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
             for i, b in enumerate(model.blocks)]
    model(x.to(model.embed.weight.device))
    for h in hooks:
        h.remove()
    t = torch.arange(first_query, L)
    layers = []
    for i, block in enumerate(model.blocks):
        q, k, _ = block.mixer.project(inputs[i], 0)  # [B, L, H, D], [B, L, Hk, D]
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
        s = torch.einsum("bthd,bshd->bhts", q, k) * default_scale(None, q.shape[-1])
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
        w = s.softmax(-1)[:, :, first_query:]  # [B, H, L - first_query, L]
        layers.append({"layer": i, "weight_on_first": float(w[..., 0].mean()),
                       "weight_on_first_by_head": [round(float(v), 4) for v in w[..., 0].mean((0, 2))],
                       "uniform": float((1.0 / (t + 1).float()).mean())})
    return {"checkpoint": path, "sink_token": tok.sink_token, "seq_len": L, "layers": layers}


if __name__ == "__main__":
    print(json.dumps([sink_weights(p) for p in sys.argv[1:]], indent=1))

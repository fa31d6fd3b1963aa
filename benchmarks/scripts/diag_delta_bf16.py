"""Session 9 diagnostic: the delta-rule kernels' forward error per chunk (bf16 vs fp32, beta in
(0, 1) vs (0, 2), gated or not) at T = 1000, K = V = 128, H = 4, against the float64 recurrence;
then (argv[1] == "bwd") one gated bf16 forward + backward, to locate the illegal memory access."""
import sys

import torch
import torch.nn.functional as F

from longctx.ops.deltanet import naive_delta_rule
from longctx.ops.deltanet.triton import triton_delta_rule
from longctx.ops.gated_deltanet import naive_gated_delta_rule
from longctx.ops.gated_deltanet.triton import triton_gated_delta_rule

B, T, H, K, V, C = 1, 1000, 4, 128, 128, 64
gen = torch.Generator().manual_seed(T)
rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
q, k, v = rand(B, T, H, K), F.normalize(rand(B, T, H, K), dim=-1), rand(B, T, H, V)
x, g, S0 = rand(B, T, H), F.logsigmoid(rand(B, T, H)), rand(B, H, K, V)
scale = K ** -0.5
if sys.argv[1:] == ["bwd"]:
    dev = [t.cuda() for t in (q, k, v)]
    qq, kk, vv = (t.bfloat16().requires_grad_() for t in dev)
    o, _ = triton_gated_delta_rule(qq, kk, vv, g.float().cuda(), 2 * torch.sigmoid(x).float().cuda(), scale=scale,
                                   initial_state=S0.float().cuda(), output_final_state=True, chunk_size=C)
    o.float().sum().backward()
    torch.cuda.synchronize()
    print("gated bf16 fwd+bwd finished, |dq|", float(qq.grad.float().norm()))
    sys.exit()
for gated in (False, True):
    for bmax in (1.0, 2.0):
        beta = bmax * torch.sigmoid(x)
        if gated:
            ref, _ = naive_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=S0, output_final_state=True)
        else:
            ref, _ = naive_delta_rule(q, k, v, beta, scale=scale, initial_state=S0, output_final_state=True)
        for dtype in (torch.float32, torch.bfloat16):
            args = [t.to(dtype).cuda() for t in (q, k, v)]
            kw = {"scale": scale, "initial_state": S0.float().cuda(), "output_final_state": True, "chunk_size": C}
            with torch.no_grad():
                if gated:
                    o, _ = triton_gated_delta_rule(*args, g.float().cuda(), beta.float().cuda(), **kw)
                else:
                    o, _ = triton_delta_rule(*args, beta.float().cuda(), **kw)
            o = o.double().cpu()
            e = ((o - ref).pow(2).mean((0, 2, 3)) / ref.pow(2).mean((0, 2, 3))).sqrt()
            per_chunk = [round(float(e[i * C:(i + 1) * C].max()), 4) for i in range(0, 16, 3)]
            tot = float(((o - ref).pow(2).mean() / ref.pow(2).mean()).sqrt())
            print(f"gated={gated} beta<{bmax} {dtype}: rel err {tot:.3e}; worst per chunk 0,3,..,15: {per_chunk}", flush=True)

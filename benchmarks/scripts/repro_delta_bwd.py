import sys

import torch

from longctx.bench.kernels import _inputs, _ours

op, T = sys.argv[1], int(sys.argv[2])
ins = _inputs(op, 1, T, 16, 128, torch.bfloat16, seed=0)
diff = [t.requires_grad_() for t in ins if t.dim() >= 3]
o = _ours(op)(*ins)
torch.cuda.synchronize(); print(op, T, "fwd ok", flush=True)
torch.autograd.grad(o, diff, torch.randn_like(o))
torch.cuda.synchronize(); print(op, T, "bwd ok", flush=True)

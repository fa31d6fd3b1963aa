"""H3 written plainly (Fu et al. 2023, Algorithm 1, multi-head form):

    K_bar_t = sum_{j<N} f_j K_{t-j}                       (shift SSM, a FIR per channel)
    S_t     = A_bar S_{t-1} + B_bar (K_bar_t V_t^T)        (diagonal SSM per key channel, state N_s)
    O_t     = Q_t^T (2 Re(C S_t))                          (per head: [D_k] x [D_k, D_v])

Shapes: ``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``; ``shift_kernel [H*Dk, N]``; the diagonal
SSM (S4D parameterisation) ``A, Bs, C [H*Dk, Ns]`` complex, ``dt [H*Dk]``: one SSM per (head,
key dim), shared by the ``Dv`` value dims. The token loop, no FFT.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.s4.ssm import discretize


def naive_h3(q: Tensor, k: Tensor, v: Tensor, shift_kernel: Tensor, A: Tensor, Bs: Tensor, C: Tensor,
             dt: Tensor, method: str = "zoh") -> Tensor:
    Bsz, T, H, Dk = k.shape
    Dv = v.shape[-1]
    kf = k.reshape(Bsz, T, H * Dk)
    N = shift_kernel.shape[1]
    log_A_bar, B_bar = discretize(A, Bs, dt, method)
    A_bar = torch.exp(log_A_bar)  # [H*Dk, Ns]
    S = torch.zeros(Bsz, H * Dk, A.shape[1], Dv, dtype=A.dtype, device=q.device)
    outs = []
    for t in range(T):
        kbar = sum(shift_kernel[:, j] * kf[:, t - j] for j in range(min(N, t + 1)))  # [B, H*Dk]
        kv = kbar[:, :, None] * v[:, t].repeat_interleave(Dk, dim=1)  # [B, H*Dk, Dv] (head of each row)
        S = A_bar[None, :, :, None] * S + B_bar[None, :, :, None] * kv[:, :, None, :].to(A.dtype)
        mem = 2 * (C[None, :, :, None] * S).sum(2).real  # [B, H*Dk, Dv]
        o = (q[:, t].reshape(Bsz, H * Dk, 1) * mem).reshape(Bsz, H, Dk, Dv).sum(2)  # [B, H, Dv]
        outs.append(o)
    return torch.stack(outs, 1).to(q.dtype) if outs else q.new_zeros(Bsz, 0, H, Dv)

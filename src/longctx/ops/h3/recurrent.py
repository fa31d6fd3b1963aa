"""H3 decode: push the key into the shift register, one step of the diagonal SSM per
(head, key dim, value dim), read out with the query."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.h3.chunk import H3State, check_h3
from longctx.ops.s4.ssm import discretize


def h3_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, shift_kernel: Tensor, A: Tensor, Bs: Tensor,
            C: Tensor, dt: Tensor, state: H3State, method: str = "zoh") -> tuple[Tensor, H3State]:
    """``q_t, k_t [B, H, Dk]``, ``v_t [B, H, Dv]`` -> ``(o_t [B, H, Dv], state)``."""
    Bsz, _, H, Dk, Dv = check_h3("h3_step", q_t[:, None], k_t[:, None], v_t[:, None], shift_kernel, A)
    history, S = state
    window = torch.cat([history, k_t.reshape(Bsz, 1, H * Dk)], dim=1)  # [B, N, H*Dk], oldest first
    kbar = (window * shift_kernel.flip(1).transpose(0, 1)[None]).sum(1)  # tap j on k_{t-j}
    kv = kbar[..., None] * v_t.repeat_interleave(Dk, dim=1)  # [B, H*Dk, Dv]
    log_A_bar, B_bar = discretize(A, Bs, dt, method)
    S = torch.exp(log_A_bar)[None, :, :, None] * S + B_bar[None, :, :, None] * kv[:, :, None, :].to(A.dtype)
    mem = 2 * (C[None, :, :, None] * S).sum(2).real.to(q_t.dtype)
    o = (q_t.reshape(Bsz, H * Dk, 1) * mem).reshape(Bsz, H, Dk, Dv).sum(2)
    return o, (window[:, 1:], S)

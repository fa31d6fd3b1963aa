"""Gated Linear Attention (Yang et al. 2024), the reference: the recurrence as a loop over time.

S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,  o_t = (scale q_t)^T S_t, with the per-key-dimension
forget gate given in log space, g_t <= 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_gate, check_qkv, check_state, default_scale


def naive_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """GLA by its recurrence.

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; g: [B, T, H, Dk] log forget gate (<= 0);
    initial_state: S [B, H, Dk, Dv]. Returns o [B, T, H, Dv] and the final S or None.
    """
    op = "naive_gla"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    check_gate(op, "g", g, (B, T, H, Dk), log_space=True)
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
    scale = default_scale(scale, Dk)
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32

    qc, kc, vc, gc = (x.to(dtype) for x in (q, k, v, g))
    S = q.new_zeros(B, H, Dk, Dv, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    outs = []
    for t in range(T):
        # Yang et al. 2024, §4.1: S_t = (alpha_t^T 1) ⊙ S_{t-1} + k_t^T v_t, alpha_t = exp(g_t)
        S = gc[:, t].exp().unsqueeze(-1) * S + kc[:, t].unsqueeze(-1) * vc[:, t].unsqueeze(-2)
        outs.append(((qc[:, t] * scale).unsqueeze(-2) @ S).squeeze(-2))  # §4.1: o_t = q_t S_t
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, Dv, dtype=dtype)
    return o.to(q.dtype), (S if output_final_state else None)

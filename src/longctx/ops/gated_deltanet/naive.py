"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025), the reference: the gated delta rule as a loop
over time.

S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = (scale q_t)^T S_t,
with alpha_t = exp(g_t) in (0, 1] given in log space (g_t <= 0), unit-norm keys, beta_t in [0, 2].
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_gate, check_qkv, check_state, default_scale
from longctx.ops.deltanet.checks import check_beta, prepare_qk


def naive_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Gated DeltaNet by its recurrence.

    q, k: [B, T, H, Dk] (k unit-norm, or ``use_qk_l2norm=True`` to normalise q and k here);
    v: [B, T, H, Dv]; g: [B, T, H] log decay (<= 0); beta: [B, T, H] in [0, 2];
    initial_state: S [B, H, Dk, Dv]. Returns o [B, T, H, Dv] and the final S or None.
    """
    op = "naive_gated_delta_rule"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    check_gate(op, "g", g, (B, T, H), log_space=True)
    check_beta(op, "beta", beta, (B, T, H))
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
    scale = default_scale(scale, Dk)
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32

    qc, kc = prepare_qk(op, q, k, use_qk_l2norm, dtype)
    vc, gc, bc = v.to(dtype), g.to(dtype), beta.to(dtype)
    S = q.new_zeros(B, H, Dk, Dv, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    eye = torch.eye(Dk, dtype=dtype, device=q.device)
    outs = []
    for t in range(T):
        k_t = kc[:, t].unsqueeze(-1)  # [B, H, Dk, 1]
        alpha_t, b_t = gc[:, t].exp()[..., None, None], bc[:, t, :, None, None]  # [B, H, 1, 1]
        # GDN §3.1 (gated delta rule): S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
        S = alpha_t * (eye - b_t * k_t @ k_t.transpose(-1, -2)) @ S + b_t * k_t @ vc[:, t].unsqueeze(-2)
        outs.append(((qc[:, t] * scale).unsqueeze(-2) @ S).squeeze(-2))  # o_t = q_t^T S_t
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, Dv, dtype=dtype)
    return o.to(q.dtype), (S if output_final_state else None)

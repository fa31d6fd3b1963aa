"""Retention (RetNet, Sun et al. 2023), the reference: the parallel representation.

o_n = sum_{m<=n} gamma^(n-m) (q_n . k_m) v_m + gamma^(n+1) q_n S_0, with q already scaled: the
paper's eq. 5 ``(Q K^T ⊙ D) V`` plus the decayed initial state. The xPos rotation Θ of the paper
is a position encoding and lives outside the op. Decays are per head, gamma_h = exp(log_decay_h).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_bidirectional, check_qkv, check_state, default_scale
from longctx.ops.retention.decay import resolve_log_decay


def naive_retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    log_decay: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    causal: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Retention by its parallel definition.

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; log_decay: [H] (log gamma <= 0, default RetNet's);
    initial_state: S [B, H, Dk, Dv]. Returns o [B, T, H, Dv] and the final S or None.
    ``causal=False``: the bidirectional parallel form with the symmetric decay
    ``D_nm = gamma^|n-m|`` (the two-sided decay of vision retention, e.g. Fan et al. 2024, RMT);
    no state.
    """
    op = "naive_retention"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    check_bidirectional(op, causal, initial_state, output_final_state)
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32
    b = resolve_log_decay(op, log_decay, H, q, dtype)  # [H]
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
    scale = default_scale(scale, Dk)

    qt = q.to(dtype).transpose(1, 2) * scale  # [B, H, T, Dk]
    kt, vt = k.to(dtype).transpose(1, 2), v.to(dtype).transpose(1, 2)
    n = torch.arange(T, device=q.device, dtype=dtype)
    dist = n[:, None] - n[None, :]  # n - m, [T, T]
    # eq. 5: D_nm = gamma^(n-m) for n >= m else 0 (masked before exp: never exp of a positive)
    if causal:
        expo = torch.where(dist >= 0, dist * b[:, None, None], float("-inf"))  # [H, T, T]
    else:  # D_nm = gamma^|n-m|
        expo = dist.abs() * b[:, None, None]
    D = expo.exp()
    o = ((qt @ kt.transpose(-1, -2)) * D) @ vt  # eq. 5: (Q K^T ⊙ D) V, [B, H, T, Dv]
    if initial_state is not None:
        S0 = initial_state.to(dtype)
        # unrolling eq. 6 from S_0: the state reaches token n decayed by gamma^(n+1)
        o = o + ((n + 1)[:, None] * b[:, None, None]).exp() * (qt @ S0)

    final_state = None
    if output_final_state:
        w = ((T - 1 - n) * b[:, None]).exp()  # gamma^(T-1-m), [H, T]
        final_state = (kt * w[..., None]).transpose(-1, -2) @ vt  # sum_m gamma^(T-1-m) k_m v_m^T
        if initial_state is not None:
            final_state = final_state + (T * b).exp()[:, None, None] * initial_state.to(dtype)
    return o.transpose(1, 2).to(q.dtype).contiguous(), final_state

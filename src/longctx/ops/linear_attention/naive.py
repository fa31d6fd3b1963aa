"""Linear attention (Katharopoulos et al. 2020), the reference: the causal masked form.

o_i = phi(q_i)^T S_i  (optionally / (phi(q_i)^T z_i + eps)), with S_i = S_0 + sum_{j<=i}
phi(k_j) v_j^T and z_i = z_0 + sum_{j<=i} phi(k_j). Written as the paper's causal-masking form
(§3.3: sums over j <= i as a masked [T, T] product), an independent check of the other forms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_bidirectional, check_qkv, default_scale
from longctx.ops.linear_attention.feature_maps import (
    apply_feature_map,
    check_feature_map,
    check_la_state,
    feature_dim,
)


def naive_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    feature_map: str = "elu+1",
    normalize: bool = False,
    scale: float | None = None,
    eps: float = 1e-6,
    initial_state: tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
    causal: bool = True,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Linear attention by its definition; ``causal=False`` sums over every j (no state).

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; initial_state: (S [B, H, F, Dv], z [B, H, F]) with
    F = feature_dim(feature_map, Dk). Returns o [B, T, H, Dv] and the final (S, z) or None.
    """
    op = "naive_linear_attention"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    check_bidirectional(op, causal, initial_state, output_final_state)
    check_feature_map(op, feature_map)
    Fd = feature_dim(feature_map, Dk)
    if initial_state is not None:
        check_la_state(op, "initial_state", initial_state, (B, H, Fd, Dv))
    scale = default_scale(scale, Dk)
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32

    qf = apply_feature_map(q.to(dtype) * scale, feature_map).transpose(1, 2)  # [B, H, T, F]
    kf = apply_feature_map(k.to(dtype), feature_map).transpose(1, 2)  # [B, H, T, F]
    vt = v.to(dtype).transpose(1, 2)  # [B, H, T, Dv]
    if initial_state is None:
        S0 = q.new_zeros(B, H, Fd, Dv, dtype=dtype)
        z0 = q.new_zeros(B, H, Fd, dtype=dtype)
    else:
        S0, z0 = initial_state[0].to(dtype), initial_state[1].to(dtype)

    seen = torch.ones(T, T, dtype=torch.bool, device=q.device)
    if causal:
        seen = seen.tril()
    # Katharopoulos et al. 2020, §3.3: sim(q_i, k_j) = phi(q_i)^T phi(k_j) for j <= i (every j
    # when bidirectional, their eq. 4 before the causal masking of §3.3)
    A = (qf @ kf.transpose(-1, -2)).masked_fill(~seen, 0.0)  # [B, H, T, T]
    num = A @ vt + qf @ S0  # [B, H, T, Dv]
    if normalize:
        den = A.sum(-1) + (qf @ z0.unsqueeze(-1)).squeeze(-1)  # phi(q_i)^T z_i, [B, H, T]
        num = num / (den + eps).unsqueeze(-1)  # §3.3: o_i = phi(q_i)^T S_i / phi(q_i)^T z_i
    o = num.transpose(1, 2).to(q.dtype).contiguous()  # [B, T, H, Dv]

    final_state = None
    if output_final_state:
        # §3.3: S_T = S_0 + sum_j phi(k_j) v_j^T, z_T = z_0 + sum_j phi(k_j)
        final_state = (S0 + kf.transpose(-1, -2) @ vt, z0 + kf.sum(2))
    return o, final_state

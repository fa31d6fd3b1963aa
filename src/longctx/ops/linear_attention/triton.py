"""Causal linear attention through the scalar-decay Triton kernels with no decay (import needs
Triton). The feature map and the normaliser run in PyTorch (O(T F), autograd), the T-mixing
``sum_{j<=i} phi(q_i)^T phi(k_j) v_j`` and the state in the kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.triton_scalar_decay import scalar_decay_chunk
from longctx.ops.linear_attention.feature_maps import apply_feature_map


def triton_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    feature_map: str,
    normalize: bool,
    scale: float,
    eps: float,
    initial_state: tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Arguments as ``chunk_linear_attention`` (Katharopoulos et al. 2020, eq. 5 / §3.3).

    initial_state: (S [N, H, F, Dv], z [N, H, F]). Returns o [B, T, H, Dv] and (S, z) or None.
    """
    qf = apply_feature_map(q * scale, feature_map)  # [B, T, H, F]
    kf = apply_feature_map(k, feature_map)
    S0 = initial_state[0] if initial_state is not None else None
    o, S = scalar_decay_chunk(qf, kf, v, None, scale=1.0, initial_state=S0,
                              output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    if not (normalize or output_final_state):
        return o, None
    dtype = torch.promote_types(q.dtype, torch.float32)
    kf32 = kf.to(dtype)
    if cu_seqlens is None:
        z_incl = kf32.cumsum(1)  # z_i = z_0 + sum_{j<=i} phi(k_j), [B, T, H, F]
        z0 = initial_state[1].to(dtype).unsqueeze(1) if initial_state is not None else 0.0
        z_incl = z_incl + z0
        z_final = z_incl[:, -1]
    else:
        z_incl, z_final = _packed_cumsum(kf32, cu_seqlens, initial_state)
    if normalize:  # §3.3: o_i = phi(q_i)^T S_i / (phi(q_i)^T z_i)
        den = (qf.to(dtype) * z_incl).sum(-1, keepdim=True)
        o = (o.to(dtype) / (den + eps)).to(q.dtype)
    return o, ((S, z_final) if output_final_state else None)


def _packed_cumsum(kf: Tensor, cu: Tensor, initial_state) -> tuple[Tensor, Tensor]:
    """Per-sequence inclusive cumsum of ``kf [1, T, H, F]`` and each sequence's total."""
    parts, finals = [], []
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        z = kf[:, s:e].cumsum(1)
        if initial_state is not None:
            z = z + initial_state[1][n].to(kf.dtype)
        parts.append(z)
        finals.append(z[0, -1] if e > s else (initial_state[1][n].to(kf.dtype) if initial_state is not None
                                               else kf.new_zeros(kf.shape[2:])))
    return torch.cat(parts, dim=1), torch.stack(finals)

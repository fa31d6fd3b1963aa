"""Linear attention as an RNN (Katharopoulos et al. 2020, §3.4): one token at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import decode_inplace, decode_unsupported, wants_triton
from longctx.ops.common.checks import check_qkv, check_step_qkv, default_scale
from longctx.ops.linear_attention.feature_maps import (
    apply_feature_map,
    check_feature_map,
    check_la_state,
    feature_dim,
)

State = tuple[Tensor, Tensor]


def _step(
    q_t: Tensor, k_t: Tensor, v_t: Tensor, S: Tensor, z: Tensor,
    feature_map: str, normalize: bool, scale: float, eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Unchecked step in the compute dtype: q_t, k_t [B, H, Dk], v_t [B, H, Dv]."""
    qf = apply_feature_map(q_t * scale, feature_map)  # [B, H, F]
    kf = apply_feature_map(k_t, feature_map)  # [B, H, F]
    S = S + kf.unsqueeze(-1) * v_t.unsqueeze(-2)  # §3.4: S_t = S_{t-1} + phi(k_t) v_t^T
    z = z + kf  # §3.4: z_t = z_{t-1} + phi(k_t)
    o = (qf.unsqueeze(-2) @ S).squeeze(-2)  # phi(q_t)^T S_t, [B, H, Dv]
    if normalize:
        o = o / ((qf * z).sum(-1, keepdim=True) + eps)  # §3.4: / (phi(q_t)^T z_t + eps)
    return o, S, z


def _init(
    op: str, name: str, state: State | None, shape: tuple[int, int, int, int], like: Tensor, dtype
) -> State:
    """Validated ``(S, z)`` in ``dtype``, zeros if ``state`` is None; ``shape = (B, H, F, Dv)``."""
    if state is None:
        return like.new_zeros(shape, dtype=dtype), like.new_zeros(shape[:3], dtype=dtype)
    check_la_state(op, name, state, shape)
    return state[0].to(dtype), state[1].to(dtype)


def linear_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    state: State | None,
    *,
    feature_map: str = "elu+1",
    normalize: bool = False,
    scale: float | None = None,
    eps: float = 1e-6,
    backend: str | None = None,
) -> tuple[Tensor, State]:
    """One decode step. q_t, k_t [B, H, Dk]; v_t [B, H, Dv]; state (S [B, H, F, Dv], z [B, H, F])
    or None (zeros). Returns o_t [B, H, Dv] and the new state (float32 for half inputs).
    ``backend``: "auto" (default) runs the fused Triton step on CUDA tensors (``triton_decode``)."""
    op = "linear_attention_step"
    B, _, H, _, Dk, Dv = check_step_qkv(op, q_t, k_t, v_t)
    check_feature_map(op, feature_map)
    dtype = torch.promote_types(q_t.dtype, torch.float32)
    F = feature_dim(feature_map, Dk)
    S, z = _init(op, "state", state, (B, H, F, Dv), q_t, dtype)
    if wants_triton(op, backend, q_t, k_t, v_t, S, supported=decode_unsupported(F)):
        from longctx.ops.common.triton_decode import fused_recurrent_step

        qf = apply_feature_map(q_t.to(dtype) * default_scale(scale, Dk), feature_map)  # [B, H, F]
        kf = apply_feature_map(k_t.to(dtype), feature_map)
        o, S, z = fused_recurrent_step(qf, kf, v_t, S, z=z, normalize=normalize, eps=eps,
                                       inplace=decode_inplace(S, dtype))
        return o.to(q_t.dtype), (S, z)
    o, S, z = _step(
        q_t.to(dtype), k_t.to(dtype), v_t.to(dtype), S, z,
        feature_map, normalize, default_scale(scale, Dk), eps,
    )
    return o.to(q_t.dtype), (S, z)


def recurrent_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    feature_map: str = "elu+1",
    normalize: bool = False,
    scale: float | None = None,
    eps: float = 1e-6,
    initial_state: State | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, State | None]:
    """Token-by-token linear attention. q, k [B, T, H, Dk]; v [B, T, H, Dv] -> o [B, T, H, Dv]."""
    op = "recurrent_linear_attention"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    check_feature_map(op, feature_map)
    dtype = torch.promote_types(q.dtype, torch.float32)
    shape = (B, H, feature_dim(feature_map, Dk), Dv)
    S, z = _init(op, "initial_state", initial_state, shape, q, dtype)
    scale = default_scale(scale, Dk)
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    outs = []
    for t in range(T):
        o_t, S, z = _step(qc[:, t], kc[:, t], vc[:, t], S, z, feature_map, normalize, scale, eps)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, Dv, dtype=dtype)
    return o.to(q.dtype), ((S, z) if output_final_state else None)

"""Retention, recurrent representation (RetNet, Sun et al. 2023, eq. 6): one token at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import decode_inplace, decode_unsupported, wants_triton
from longctx.ops.common.checks import check_qkv, check_state, check_step_qkv, default_scale
from longctx.ops.retention.decay import resolve_log_decay


def _step(
    q_t: Tensor, k_t: Tensor, v_t: Tensor, S: Tensor, gamma: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Unchecked step: q_t, k_t [B, H, Dk], v_t [B, H, Dv], S [B, H, Dk, Dv], gamma [H, 1, 1]."""
    S = gamma * S + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # eq. 6: S_n = gamma S_{n-1} + k_n^T v_n
    o = ((q_t * scale).unsqueeze(-2) @ S).squeeze(-2)  # eq. 6: o_n = q_n S_n, [B, H, Dv]
    return o, S


def retention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    state: Tensor | None,
    *,
    log_decay: Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One decode step. q_t, k_t [B, H, Dk]; v_t [B, H, Dv]; state S [B, H, Dk, Dv] or None
    (zeros); log_decay [H]. Returns o_t [B, H, Dv] and the new S (float32 for half inputs).
    ``backend``: "auto" (default) runs the fused Triton step on CUDA tensors (``triton_decode``)."""
    op = "retention_step"
    B, _, H, _, Dk, Dv = check_step_qkv(op, q_t, k_t, v_t)
    dtype = torch.promote_types(q_t.dtype, torch.float32)
    b = resolve_log_decay(op, log_decay, H, q_t, dtype)
    if state is None:
        state = q_t.new_zeros(B, H, Dk, Dv, dtype=dtype)
    check_state(op, "state", state, (B, H, Dk, Dv))
    if wants_triton(op, backend, q_t, k_t, v_t, state, supported=decode_unsupported(Dk)):
        from longctx.ops.common.triton_decode import fused_recurrent_step

        S = state.to(dtype)
        o, S, _ = fused_recurrent_step(q_t, k_t, v_t, S, g=b.expand(B, H), scale=default_scale(scale, Dk),
                                       inplace=decode_inplace(S, dtype))
        return o.to(q_t.dtype), S
    o, S = _step(
        q_t.to(dtype), k_t.to(dtype), v_t.to(dtype), state.to(dtype),
        b.exp()[:, None, None], default_scale(scale, Dk),
    )
    return o.to(q_t.dtype), S


def recurrent_retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    log_decay: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Token-by-token retention. q, k [B, T, H, Dk]; v [B, T, H, Dv] -> o [B, T, H, Dv]."""
    op = "recurrent_retention"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    dtype = torch.promote_types(q.dtype, torch.float32)
    gamma = resolve_log_decay(op, log_decay, H, q, dtype).exp()[:, None, None]  # [H, 1, 1]
    if initial_state is None:
        S = q.new_zeros(B, H, Dk, Dv, dtype=dtype)
    else:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
        S = initial_state.to(dtype)
    scale = default_scale(scale, Dk)
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    outs = []
    for t in range(T):
        o_t, S = _step(qc[:, t], kc[:, t], vc[:, t], S, gamma, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, Dv, dtype=dtype)
    return o.to(q.dtype), (S if output_final_state else None)

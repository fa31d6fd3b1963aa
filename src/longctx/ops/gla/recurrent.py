"""Gated Linear Attention, recurrent form (Yang et al. 2024, §4.1): one token at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import checkable, decode_inplace, decode_unsupported, wants_triton
from longctx.ops.common.checks import (
    check_gate,
    check_qkv,
    check_state,
    check_step_qkv,
    default_scale,
)


def _step(
    q_t: Tensor, k_t: Tensor, v_t: Tensor, g_t: Tensor, S: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Unchecked step: q_t, k_t, g_t [B, H, Dk], v_t [B, H, Dv], S [B, H, Dk, Dv]."""
    # §4.1: S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T
    S = g_t.exp().unsqueeze(-1) * S + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
    o = ((q_t * scale).unsqueeze(-2) @ S).squeeze(-2)  # §4.1: o_t = q_t^T S_t, [B, H, Dv]
    return o, S


def gla_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    g_t: Tensor,
    state: Tensor | None,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One decode step. q_t, k_t, g_t [B, H, Dk] (g_t <= 0); v_t [B, H, Dv]; state
    S [B, H, Dk, Dv] or None (zeros). Returns o_t [B, H, Dv] and the new S (float32 for half).
    ``backend``: "auto" (default) runs the fused Triton step on CUDA tensors (``triton_decode``)."""
    op = "gla_step"
    B, _, H, _, Dk, Dv = check_step_qkv(op, q_t, k_t, v_t)
    check_gate(op, "g_t", *checkable(g_t), (B, H, Dk), log_space=True)
    dtype = torch.promote_types(q_t.dtype, torch.float32)
    if state is None:
        state = q_t.new_zeros(B, H, Dk, Dv, dtype=dtype)
    check_state(op, "state", state, (B, H, Dk, Dv))
    if wants_triton(op, backend, q_t, k_t, v_t, g_t, state, supported=decode_unsupported(Dk)):
        from longctx.ops.common.triton_decode import fused_recurrent_step

        S = state.to(dtype)
        o, S, _ = fused_recurrent_step(q_t, k_t, v_t, S, g=g_t, scale=default_scale(scale, Dk),
                                       inplace=decode_inplace(S, dtype))
        return o.to(q_t.dtype), S
    o, S = _step(
        q_t.to(dtype), k_t.to(dtype), v_t.to(dtype), g_t.to(dtype), state.to(dtype),
        default_scale(scale, Dk),
    )
    return o.to(q_t.dtype), S


def recurrent_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Token-by-token GLA. q, k, g [B, T, H, Dk]; v [B, T, H, Dv] -> o [B, T, H, Dv]."""
    op = "recurrent_gla"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    check_gate(op, "g", g, (B, T, H, Dk), log_space=True)
    dtype = torch.promote_types(q.dtype, torch.float32)
    if initial_state is None:
        S = q.new_zeros(B, H, Dk, Dv, dtype=dtype)
    else:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
        S = initial_state.to(dtype)
    scale = default_scale(scale, Dk)
    qc, kc, vc, gc = (x.to(dtype) for x in (q, k, v, g))
    outs = []
    for t in range(T):
        o_t, S = _step(qc[:, t], kc[:, t], vc[:, t], gc[:, t], S, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, Dv, dtype=dtype)
    return o.to(q.dtype), (S if output_final_state else None)

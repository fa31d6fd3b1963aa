"""Gated DeltaNet, recurrent form (Yang, Kautz, Hatamizadeh 2025, §3.1): one token at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import checkable, decode_unsupported, wants_triton
from longctx.ops.common.checks import (
    check_gate,
    check_qkv,
    check_state,
    check_step_qkv,
    default_scale,
)
from longctx.ops.deltanet.checks import check_beta, prepare_qk
from longctx.ops.deltanet.recurrent import _step as _delta_step
from longctx.ops.deltanet.recurrent import fused_delta_step, step_qk


def _step(
    q_t: Tensor, k_t: Tensor, v_t: Tensor, g_t: Tensor, beta_t: Tensor, S: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Unchecked step: q_t, k_t [B, H, Dk], v_t [B, H, Dv], g_t, beta_t [B, H], S [B, H, Dk, Dv]."""
    # §3.1: S_t = alpha_t S_{t-1} + k_t beta_t (v_t - alpha_t S_{t-1}^T k_t)^T, i.e. the delta
    # rule's step applied to the decayed state alpha_t S_{t-1}
    return _delta_step(q_t, k_t, v_t, beta_t, g_t.exp()[..., None, None] * S, scale)


def gated_delta_rule_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    g_t: Tensor,
    beta_t: Tensor,
    state: Tensor | None,
    *,
    scale: float | None = None,
    use_qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One decode step. q_t, k_t [B, H, Dk] (k_t unit-norm unless ``use_qk_l2norm``);
    v_t [B, H, Dv]; g_t [B, H] (<= 0); beta_t [B, H] in [0, 2]; state S [B, H, Dk, Dv] or None
    (zeros). Returns o_t [B, H, Dv] and the new S (float32 for half inputs).
    ``backend``: "auto" (default) runs the fused Triton step on CUDA tensors (``triton_decode``)."""
    op = "gated_delta_rule_step"
    B, _, H, _, Dk, Dv = check_step_qkv(op, q_t, k_t, v_t)
    g_c, beta_c = checkable(g_t, beta_t)
    check_gate(op, "g_t", g_c, (B, H), log_space=True)
    check_beta(op, "beta_t", beta_c, (B, H))
    dtype = torch.promote_types(q_t.dtype, torch.float32)
    if state is None:
        state = q_t.new_zeros(B, H, Dk, Dv, dtype=dtype)
    check_state(op, "state", state, (B, H, Dk, Dv))
    qc, kc = step_qk(op, q_t, k_t, use_qk_l2norm, dtype)
    if wants_triton(op, backend, q_t, k_t, v_t, g_t, beta_t, state, supported=decode_unsupported(Dk)):
        return fused_delta_step(qc, kc, v_t, g_t, beta_t, state.to(dtype), default_scale(scale, Dk), q_t.dtype)
    o, S = _step(
        qc, kc, v_t.to(dtype), g_t.to(dtype), beta_t.to(dtype), state.to(dtype),
        default_scale(scale, Dk),
    )
    return o.to(q_t.dtype), S


def recurrent_gated_delta_rule(
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
    """Token-by-token Gated DeltaNet. q, k [B, T, H, Dk]; v [B, T, H, Dv]; g, beta [B, T, H]
    -> o [B, T, H, Dv] and the final S [B, H, Dk, Dv] or None."""
    op = "recurrent_gated_delta_rule"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    check_gate(op, "g", g, (B, T, H), log_space=True)
    check_beta(op, "beta", beta, (B, T, H))
    dtype = torch.promote_types(q.dtype, torch.float32)
    if initial_state is None:
        S = q.new_zeros(B, H, Dk, Dv, dtype=dtype)
    else:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
        S = initial_state.to(dtype)
    scale = default_scale(scale, Dk)
    qc, kc = prepare_qk(op, q, k, use_qk_l2norm, dtype)
    vc, gc, bc = v.to(dtype), g.to(dtype), beta.to(dtype)
    outs = []
    for t in range(T):
        o_t, S = _step(qc[:, t], kc[:, t], vc[:, t], gc[:, t], bc[:, t], S, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, Dv, dtype=dtype)
    return o.to(q.dtype), (S if output_final_state else None)

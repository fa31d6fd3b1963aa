"""DeltaNet, recurrent form (Yang et al. 2024, §2.2): one token at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import (
    checkable,
    decode_inplace,
    decode_unsupported,
    stream_capturing,
    wants_triton,
)
from longctx.ops.common.checks import check_qkv, check_state, check_step_qkv, default_scale
from longctx.ops.deltanet.checks import check_beta, l2norm, prepare_qk


def _step(
    q_t: Tensor, k_t: Tensor, v_t: Tensor, beta_t: Tensor, S: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Unchecked step: q_t, k_t [B, H, Dk], v_t [B, H, Dv], beta_t [B, H], S [B, H, Dk, Dv]."""
    # §2.2: S_t = S_{t-1} + k_t beta_t (v_t - S_{t-1}^T k_t)^T
    delta = beta_t.unsqueeze(-1) * (v_t - (k_t.unsqueeze(-2) @ S).squeeze(-2))  # [B, H, Dv]
    S = S + k_t.unsqueeze(-1) * delta.unsqueeze(-2)
    o = ((q_t * scale).unsqueeze(-2) @ S).squeeze(-2)  # o_t = q_t^T S_t, [B, H, Dv]
    return o, S


def delta_rule_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    beta_t: Tensor,
    state: Tensor | None,
    *,
    scale: float | None = None,
    use_qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One decode step. q_t, k_t [B, H, Dk] (k_t unit-norm unless ``use_qk_l2norm``);
    v_t [B, H, Dv]; beta_t [B, H] in [0, 2]; state S [B, H, Dk, Dv] or None (zeros).
    Returns o_t [B, H, Dv] and the new S (float32 for half inputs).
    ``backend``: "auto" (default) runs the fused Triton step on CUDA tensors (``triton_decode``)."""
    op = "delta_rule_step"
    B, _, H, _, Dk, Dv = check_step_qkv(op, q_t, k_t, v_t)
    check_beta(op, "beta_t", *checkable(beta_t), (B, H))
    dtype = torch.promote_types(q_t.dtype, torch.float32)
    if state is None:
        state = q_t.new_zeros(B, H, Dk, Dv, dtype=dtype)
    check_state(op, "state", state, (B, H, Dk, Dv))
    qc, kc = step_qk(op, q_t, k_t, use_qk_l2norm, dtype)
    if wants_triton(op, backend, q_t, k_t, v_t, beta_t, state, supported=decode_unsupported(Dk)):
        return fused_delta_step(qc, kc, v_t, None, beta_t, state.to(dtype), default_scale(scale, Dk), q_t.dtype)
    o, S = _step(qc, kc, v_t.to(dtype), beta_t.to(dtype), state.to(dtype), default_scale(scale, Dk))
    return o.to(q_t.dtype), S


def step_qk(op: str, q_t: Tensor, k_t: Tensor, use_qk_l2norm: bool, dtype) -> tuple[Tensor, Tensor]:
    """``prepare_qk`` for one step; while a CUDA graph is captured the unit-key check (a host
    read-back) is skipped (``backend.checkable``)."""
    if stream_capturing():
        q_t, k_t = q_t.to(dtype), k_t.to(dtype)
        return (l2norm(q_t), l2norm(k_t)) if use_qk_l2norm else (q_t, k_t)
    return prepare_qk(op, q_t, k_t, use_qk_l2norm, dtype, "k_t")


def fused_delta_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, g_t: Tensor | None, beta_t: Tensor,
                     S: Tensor, scale: float, out_dtype) -> tuple[Tensor, Tensor]:
    """The (gated) delta-rule step by the fused Triton kernel: S [B, H, Dk, Dv] in the compute
    dtype, overwritten under ``backend.inplace_decode``. Returns o_t [B, H, Dv] and the new S."""
    from longctx.ops.common.triton_decode import fused_recurrent_step

    o, S, _ = fused_recurrent_step(q_t, k_t, v_t, S, g=g_t, beta=beta_t, scale=scale,
                                   inplace=decode_inplace(S, S.dtype))
    return o.to(out_dtype), S


def recurrent_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Token-by-token DeltaNet. q, k [B, T, H, Dk]; v [B, T, H, Dv]; beta [B, T, H]
    -> o [B, T, H, Dv] and the final S [B, H, Dk, Dv] or None."""
    op = "recurrent_delta_rule"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    check_beta(op, "beta", beta, (B, T, H))
    dtype = torch.promote_types(q.dtype, torch.float32)
    if initial_state is None:
        S = q.new_zeros(B, H, Dk, Dv, dtype=dtype)
    else:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
        S = initial_state.to(dtype)
    scale = default_scale(scale, Dk)
    qc, kc = prepare_qk(op, q, k, use_qk_l2norm, dtype)
    vc, bc = v.to(dtype), beta.to(dtype)
    outs = []
    for t in range(T):
        o_t, S = _step(qc[:, t], kc[:, t], vc[:, t], bc[:, t], S, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, Dv, dtype=dtype)
    return o.to(q.dtype), (S if output_final_state else None)

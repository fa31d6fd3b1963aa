"""Input validation and preparation shared by the three forms of every log-linear base.

Each public op validates its own arguments (errors name them), then maps its base onto one
internal form (``Prepared``): ``S_t = A_t S_{t-1} + w_t k_t v_t^T``, read by ``q_t`` with
transition ``A_t = diag(exp(g_t))`` (g None, [B, T, H] or [B, T, H, Dk]) or, with ``beta``,
``A_t = exp(g_t) (I - beta_t k_t k_t^T)`` and ``w_t = beta_t`` (the gated delta rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from longctx.ops.common.checks import _shape, check_gate, check_qkv, default_scale
from longctx.ops.deltanet.checks import check_beta, prepare_qk
from longctx.ops.log_linear.fenwick import check_fenwick_state, check_lambda
from longctx.ops.mamba2.common import check_ssd_inputs, compute_dtype, expand_groups


@dataclass
class Prepared:
    """One base, in the compute dtype: q (already scaled), k [B, T, H, Dk]; v [B, T, H, Dv]."""

    q: Tensor
    k: Tensor
    v: Tensor
    g: Tensor | None  # log-gate: None, [B, T, H] (scalar per head) or [B, T, H, Dk]
    beta: Tensor | None  # [B, T, H] for the delta rule, else None
    lam: Tensor  # lambda_levels [B, T, H, L]
    S0: Tensor | None  # initial level states [B, bit_length(t0), H, Dk, Dv] or None
    t0: int  # tokens before this call (position of the first query)


def check_log_gate(op: str, name: str, g: object, B: int, T: int, H: int, Dk: int) -> None:
    """A log-space gate (<= 0) of shape [B, T, H] (scalar per head) or [B, T, H, Dk]."""
    if isinstance(g, Tensor) and tuple(g.shape) == (B, T, H):
        check_gate(op, name, g, (B, T, H), log_space=True)
    elif isinstance(g, Tensor) and tuple(g.shape) != (B, T, H, Dk):
        raise ValueError(
            f"{op}: {name} must have shape [B, T, H] = [{B}, {T}, {H}] (a scalar gate per head) or "
            f"[B, T, H, Dk] = [{B}, {T}, {H}, {Dk}], got {_shape(g)}"
        )
    else:
        check_gate(op, name, g, (B, T, H, Dk), log_space=True)


def _initial(op: str, initial_state, B: int, H: int, Dk: int, Dv: int, dtype, dims: str = "Dk, Dv"):
    if initial_state is None:
        return None, 0
    S0, t0 = check_fenwick_state(op, "initial_state", initial_state, B, H, Dk, Dv, dims)
    return S0.to(dtype), t0


def _t_last(t0: int, T: int) -> int | None:
    return t0 + T - 1 if T else None


def prepare_linear(op, q, k, v, lambda_levels, g, scale, initial_state) -> Prepared:
    """Linear attention (g None) or a gated base (GLA / retention / any diagonal decay)."""
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    if g is not None:
        check_log_gate(op, "g", g, B, T, H, Dk)
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32
    S0, t0 = _initial(op, initial_state, B, H, Dk, Dv, dtype)
    check_lambda(op, "lambda_levels", lambda_levels, (B, T, H), _t_last(t0, T))
    return Prepared(
        q.to(dtype) * default_scale(scale, Dk), k.to(dtype), v.to(dtype),
        None if g is None else g.to(dtype), None, lambda_levels.to(dtype), S0, t0,
    )


def prepare_delta(op, q, k, v, g, beta, lambda_levels, scale, initial_state, use_qk_l2norm) -> Prepared:
    """Gated DeltaNet: scalar log decay g [B, T, H], beta [B, T, H] in [0, 2], unit keys."""
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    check_gate(op, "g", g, (B, T, H), log_space=True)
    check_beta(op, "beta", beta, (B, T, H))
    dtype = torch.promote_types(q.dtype, torch.float32)
    S0, t0 = _initial(op, initial_state, B, H, Dk, Dv, dtype)
    check_lambda(op, "lambda_levels", lambda_levels, (B, T, H), _t_last(t0, T))
    qc, kc = prepare_qk(op, q, k, use_qk_l2norm, dtype)
    return Prepared(
        qc * default_scale(scale, Dk), kc, v.to(dtype), g.to(dtype), beta.to(dtype),
        lambda_levels.to(dtype), S0, t0,
    )


def prepare_mamba2(op, x, dt, A, B, C, D, lambda_levels, initial_state) -> Prepared:
    """SSD (Mamba-2) as the scalar-gate base (Dao & Gu 2024, §5): q = C, k = B, v = dt x,
    g = dt A, scale 1. The level states are SSD's [P, N] per level: S [B, L, H, P, N]."""
    Bsz, T, H, P, _, N = check_ssd_inputs(op, x, dt, A, B, C, D)
    dtype = compute_dtype(x)
    S0, t0 = _initial(op, initial_state, Bsz, H, P, N, dtype, dims="P, N")
    check_lambda(op, "lambda_levels", lambda_levels, (Bsz, T, H), _t_last(t0, T))
    dtc = dt.to(dtype)
    return Prepared(
        expand_groups(C.to(dtype), H), expand_groups(B.to(dtype), H), dtc[..., None] * x.to(dtype),
        dtc * A.to(dtype), None, lambda_levels.to(dtype),
        None if S0 is None else S0.transpose(-1, -2), t0,  # SSD's [P, N] -> [Dk = N, Dv = P]
    )


def mamba2_output(y: Tensor, x: Tensor, D: Tensor | None) -> Tensor:
    """Add the skip connection D x_t (Mamba-2 block, Dao & Gu 2024, §7.1)."""
    return y if D is None else y + D.to(y.dtype)[:, None] * x.to(y.dtype)


def check_step_lambda(op: str, lambda_t: object, B: int, H: int, t: int) -> None:
    check_lambda(op, "lambda_t", lambda_t, (B, H), t)


__all__ = [
    "Prepared",
    "check_log_gate",
    "check_step_lambda",
    "mamba2_output",
    "prepare_delta",
    "prepare_linear",
    "prepare_mamba2",
]

"""Log-linear attention, recurrent (decode) form: O(log t) level states (Guo et al. 2025, §3.1).

One step at position t, with the state S^(1..n) of the levels l >= 1 of the query at t:
    S^(l) <- A_t S^(l) for every level (the base's transition),  S^(0) = w_t k_t v_t^T
    o_t   = sum_{l=0}^{n} lambda_t^(l) q_t^T S^(l)
    merge (Fenwick increment to t+1, m = trailing ones of t):
          S^(m+1) <- S^(0) + ... + S^(m),  S^(1..m) <- 0
A_t = diag(exp(g_t)) (gated bases, w_t = 1) or exp(g_t) (I - beta_t k_t k_t^T) (gated delta
rule, w_t = beta_t).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_gate, check_step_qkv
from longctx.ops.deltanet.checks import check_beta
from longctx.ops.log_linear.fenwick import (
    FenwickState,
    check_fenwick_state,
    fenwick_advance,
    make_state,
)
from longctx.ops.log_linear.inputs import (
    Prepared,
    check_step_lambda,
    mamba2_output,
    prepare_delta,
    prepare_linear,
    prepare_mamba2,
)
from longctx.ops.mamba2.common import check_ssd_inputs


def _step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor | None, lam: Tensor,
    S: Tensor, t: int,
) -> tuple[Tensor, Tensor]:
    """Unchecked step. q, k [B, H, Dk]; v [B, H, Dv]; g None, [B, H] or [B, H, Dk]; beta [B, H]
    or None; lam [B, H, L]; S [B, bit_length(t), H, Dk, Dv]. Returns o [B, H, Dv] and the state
    of position t + 1."""
    if beta is not None:  # GDN §3.2: A_t S = alpha_t (S - beta_t k_t (k_t^T S))
        kS = k[:, None, :, None, :] @ S  # [B, n, H, 1, Dv]
        S = g.exp()[:, None, :, None, None] * (S - (beta[..., None] * k)[:, None, :, :, None] * kS)
        write = beta[..., None, None] * k[..., None] * v[..., None, :]  # beta_t k_t v_t^T
    else:
        if g is not None:  # diag(exp(g_t)) S, g scalar per head or per key dim
            S = (g.exp() if g.dim() == 3 else g.exp()[..., None])[:, None, ..., None] * S
        write = k[..., None] * v[..., None, :]
    full = torch.cat([write[:, None], S], dim=1)  # levels 0..n of the query at t
    # §3.1: o_t = sum_l lambda_t^(l) q_t^T S_t^(l)
    o = torch.einsum("blhde,bhd,bhl->bhe", full, q, lam[..., : full.shape[1]])
    return o, fenwick_advance(full, t)


def _recurrent(p: Prepared) -> tuple[Tensor, Tensor]:
    """The token loop: o [B, T, H, Dv] and the final level states."""
    B, T, H, Dk = p.q.shape
    Dv = p.v.shape[-1]
    S = p.q.new_zeros(B, 0, H, Dk, Dv) if p.S0 is None else p.S0
    outs = []
    for i in range(T):
        g = None if p.g is None else p.g[:, i]
        beta = None if p.beta is None else p.beta[:, i]
        o, S = _step(p.q[:, i], p.k[:, i], p.v[:, i], g, beta, p.lam[:, i], S, p.t0 + i)
        outs.append(o)
    o = torch.stack(outs, dim=1) if outs else p.v.new_zeros(B, 0, H, Dv)
    return o, S


def _finish(o: Tensor, S: Tensor, t1: int, like: Tensor, output_final_state: bool):
    return o.to(like.dtype).contiguous(), (make_state(S, t1) if output_final_state else None)


def recurrent_log_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lambda_levels: Tensor,
    *,
    g: Tensor | None = None,
    scale: float | None = None,
    initial_state: FenwickState | tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, FenwickState | None]:
    """Token-by-token log-linear attention; arguments as ``naive_log_linear_attention``."""
    p = prepare_linear("recurrent_log_linear_attention", q, k, v, lambda_levels, g, scale,
                       initial_state)
    o, S = _recurrent(p)
    return _finish(o, S, p.t0 + q.shape[1], q, output_final_state)


def recurrent_log_linear_gated_deltanet(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    lambda_levels: Tensor,
    *,
    scale: float | None = None,
    initial_state: FenwickState | tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
) -> tuple[Tensor, FenwickState | None]:
    """Token-by-token log-linear Gated DeltaNet; as ``naive_log_linear_gated_deltanet``."""
    p = prepare_delta("recurrent_log_linear_gated_deltanet", q, k, v, g, beta, lambda_levels,
                      scale, initial_state, use_qk_l2norm)
    o, S = _recurrent(p)
    return _finish(o, S, p.t0 + q.shape[1], q, output_final_state)


def recurrent_log_linear_mamba2(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    lambda_levels: Tensor,
    *,
    D: Tensor | None = None,
    initial_state: FenwickState | tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, FenwickState | None]:
    """Token-by-token log-linear Mamba-2; as ``naive_log_linear_mamba2``."""
    p = prepare_mamba2("recurrent_log_linear_mamba2", x, dt, A, B, C, D, lambda_levels,
                       initial_state)
    o, S = _recurrent(p)
    return _finish(mamba2_output(o, x, D), S.transpose(-1, -2), p.t0 + x.shape[1], x,
                   output_final_state)


def _empty_state(state, B: int, H: int, a: int, b: int, like: Tensor) -> FenwickState:
    """``state`` or, for None, the state before the first token (no levels, t = 0)."""
    if state is not None:
        return state
    dtype = torch.promote_types(like.dtype, torch.float32)
    return make_state(like.new_zeros(B, 0, H, a, b, dtype=dtype), 0)


def log_linear_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    lambda_t: Tensor,
    state: FenwickState | tuple[Tensor, Tensor] | None,
    *,
    g_t: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, FenwickState]:
    """One decode step. q_t, k_t [B, H, Dk]; v_t [B, H, Dv]; lambda_t [B, H, L] with
    L >= bit_length(t) + 1; g_t None, [B, H] or [B, H, Dk] (<= 0); state FenwickState or None.
    Returns o_t [B, H, Dv] and the new FenwickState (one more token)."""
    op = "log_linear_attention_step"
    B, _, H, _, Dk, Dv = check_step_qkv(op, q_t, k_t, v_t)
    if g_t is not None:
        scalar = isinstance(g_t, Tensor) and g_t.dim() == 2  # [B, H], else per key dim
        check_gate(op, "g_t", g_t, (B, H) if scalar else (B, H, Dk), log_space=True)
    state = _empty_state(state, B, H, Dk, Dv, q_t)
    check_step_lambda(op, lambda_t, B, H, check_fenwick_state(op, "state", state, B, H, Dk, Dv)[1])
    o, new = recurrent_log_linear_attention(
        q_t[:, None], k_t[:, None], v_t[:, None], lambda_t[:, None], g=_seq(g_t), scale=scale,
        initial_state=state, output_final_state=True,
    )
    return o[:, 0], new


def log_linear_gated_deltanet_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    g_t: Tensor,
    beta_t: Tensor,
    lambda_t: Tensor,
    state: FenwickState | tuple[Tensor, Tensor] | None,
    *,
    scale: float | None = None,
    use_qk_l2norm: bool = False,
) -> tuple[Tensor, FenwickState]:
    """One decode step. q_t, k_t [B, H, Dk]; v_t [B, H, Dv]; g_t, beta_t [B, H]; lambda_t
    [B, H, L]; state FenwickState or None. Returns o_t [B, H, Dv] and the new FenwickState."""
    op = "log_linear_gated_deltanet_step"
    B, _, H, _, Dk, Dv = check_step_qkv(op, q_t, k_t, v_t)
    check_gate(op, "g_t", g_t, (B, H), log_space=True)
    check_beta(op, "beta_t", beta_t, (B, H))
    state = _empty_state(state, B, H, Dk, Dv, q_t)
    check_step_lambda(op, lambda_t, B, H, check_fenwick_state(op, "state", state, B, H, Dk, Dv)[1])
    o, new = recurrent_log_linear_gated_deltanet(
        q_t[:, None], k_t[:, None], v_t[:, None], _seq(g_t), _seq(beta_t), lambda_t[:, None],
        scale=scale, initial_state=state, output_final_state=True, use_qk_l2norm=use_qk_l2norm,
    )
    return o[:, 0], new


def log_linear_mamba2_step(
    x_t: Tensor,
    dt_t: Tensor,
    A: Tensor,
    B_t: Tensor,
    C_t: Tensor,
    lambda_t: Tensor,
    state: FenwickState | tuple[Tensor, Tensor] | None,
    *,
    D: Tensor | None = None,
) -> tuple[Tensor, FenwickState]:
    """One decode step. x_t [B, H, P]; dt_t [B, H]; A [H]; B_t, C_t [B, G, N]; lambda_t
    [B, H, L]; state FenwickState (S [B, L0, H, P, N]) or None. Returns y_t [B, H, P], state."""
    op = "log_linear_mamba2_step"
    Bsz, _, H, P, _, N = check_ssd_inputs(op, x_t, dt_t, A, B_t, C_t, D, step=True)
    state = _empty_state(state, Bsz, H, P, N, x_t)
    t = check_fenwick_state(op, "state", state, Bsz, H, P, N, dims="P, N")[1]
    check_step_lambda(op, lambda_t, Bsz, H, t)
    y, new = recurrent_log_linear_mamba2(
        x_t[:, None], dt_t[:, None], A, B_t[:, None], C_t[:, None], lambda_t[:, None], D=D,
        initial_state=state, output_final_state=True,
    )
    return y[:, 0], new


def _seq(x: object) -> object:
    """A per-step tensor [B, H, ...] as a one-token sequence [B, 1, H, ...] (others unchanged)."""
    return x[:, None] if isinstance(x, Tensor) and x.dim() >= 1 else x


__all__ = [
    "log_linear_attention_step",
    "log_linear_gated_deltanet_step",
    "log_linear_mamba2_step",
    "recurrent_log_linear_attention",
    "recurrent_log_linear_gated_deltanet",
    "recurrent_log_linear_mamba2",
]

"""Log-linear attention (Guo et al. 2025), the reference: the masked O(T^2) matrix form.

    O = (A ⊙ M^H) V,   M^H_ts = lambda_t^(level(t, s)) for s <= t   (§3.2, the H-matrix form)

where A is the base's attention matrix (the output is linear in v: o_t = sum_s A_ts v_s) and
level(t, s) = bit_length(t XOR s) the Fenwick level (§3.1). Bases:
  * linear attention / gated (g None, [B, T, H] or [B, T, H, Dk]):
        A_ts = sum_d q_td k_sd exp(G_td - G_sd),  G_t = sum_{r<=t} g_r        (Q K^T ⊙ M)
  * gated delta rule: A_ts = q_t^T P(s+1..t) beta_s k_s, P(s+1..t) = A_t ... A_{s+1},
        A_r = exp(g_r) (I - beta_r k_r k_r^T), built by a loop over t that carries the vectors
        P(s+1..t) beta_s k_s of every source s at once.
A Fenwick ``initial_state`` (level states of the sources before t0) is read with the level
max(l, bit_length(t XOR t0)) (see fenwick.init_levels).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.log_linear.fenwick import (
    FenwickState,
    init_levels,
    level_matrix,
    make_state,
)
from longctx.ops.log_linear.inputs import (
    Prepared,
    mamba2_output,
    prepare_delta,
    prepare_linear,
    prepare_mamba2,
)


def _gated_scores(q: Tensor, k: Tensor, G: Tensor | None) -> Tensor:
    """A = Q K^T ⊙ M, M the causal decay mask. q, k [B, H, T, Dk]; G [B, H, T(, Dk)] cumulative
    log-gate or None. Returns A [B, H, T, T] (zero above the diagonal)."""
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    if G is None:  # linear attention: M = causal ones
        return (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)
    if G.dim() == 3:  # scalar gate per head: M_ts = exp(G_t - G_s), masked before the exp
        decay = torch.where(causal, G[..., :, None] - G[..., None, :], float("-inf")).exp()
        return (q @ k.transpose(-1, -2)) * decay
    rows = []  # per-key-dim gate: A_ts = sum_d q_td k_sd exp(G_td - G_sd), one query row at a time
    for t in range(T):
        expo = torch.where(causal[t, :, None], G[:, :, t, None] - G, float("-inf"))
        rows.append((q[:, :, t, None] * k * expo.exp()).sum(-1))  # [B, H, T]
    return torch.stack(rows, dim=2) if rows else q.new_zeros(*q.shape[:2], 0, 0)


def _delta_scores(p: Prepared, q: Tensor, k: Tensor, S0: Tensor | None):
    """Gated delta rule: A [B, H, T, T], the carried source vectors X [B, H, T, Dk] after the last
    token (X_s = P(s+1..T-1) beta_s k_s), and the initial levels transported to each query
    (q_t^T P(t0..t) S0^(l): [B, H, T, L0, Dv]) and to the end ([B, H, L0, Dk, Dv])."""
    B, H, T, Dk = k.shape
    alpha, beta = p.g.exp().transpose(1, 2), p.beta.transpose(1, 2)  # [B, H, T]
    X = k.new_zeros(B, H, T, Dk)
    Y = None if S0 is None else S0.transpose(1, 2)  # [B, H, L0, Dk, Dv]
    rows, init_rows = [], []
    src = torch.arange(T, device=k.device)
    for t in range(T):
        a_t, b_t, k_t = alpha[:, :, t, None], beta[:, :, t, None], k[:, :, t]  # [B,H,1], [B,H,Dk]
        # GDN §3.2: A_t x = alpha_t (x - beta_t k_t (k_t^T x)), applied to every earlier source
        X = a_t[..., None] * (X - b_t[..., None] * k_t[:, :, None] * (X @ k_t[..., None]))
        X = X + (src == t)[:, None].to(k.dtype) * (b_t * k_t)[:, :, None]  # the new source
        rows.append(X @ q[:, :, t, :, None])  # A_ts = q_t^T X_s, [B, H, T, 1]
        if Y is not None:
            kY = (k_t[:, :, None, None, :] @ Y)  # k_t^T S, [B, H, L0, 1, Dv]
            Y = a_t[..., None, None] * (Y - b_t[..., None, None] * k_t[:, :, None, :, None] * kY)
            init_rows.append((q[:, :, t, None, None, :] @ Y).squeeze(-2))  # [B, H, L0, Dv]
    A = torch.cat(rows, dim=-1).transpose(-1, -2) if rows else k.new_zeros(B, H, 0, 0)
    init = torch.stack(init_rows, dim=2) if init_rows else None
    return A, X, init, Y


def _naive(p: Prepared, output_final_state: bool) -> tuple[Tensor, Tensor | None]:
    """o [B, T, H, Dv] and the final level states [B, bit_length(t0 + T), H, Dk, Dv] or None."""
    q, k, v = (x.transpose(1, 2) for x in (p.q, p.k, p.v))  # [B, H, T, D]
    lam = p.lam.transpose(1, 2)  # [B, H, T, L]
    B, H, T, Dk = q.shape
    t0, t1 = p.t0, p.t0 + T
    pos = torch.arange(t0, t1, device=q.device)  # absolute positions of the queries
    L0 = 0 if p.S0 is None else p.S0.shape[1]

    G = None if p.g is None else p.g.transpose(1, 2).cumsum(dim=2)  # [B, H, T(, Dk)]
    if p.beta is None:
        A = _gated_scores(q, k, G)
        # decays of the sources to the last token and of the initial state to each query
        G_last = G[:, :, -1:] if G is not None and T else None
        k_end = k if G_last is None else k * _gate(G_last - G, Dk).exp()
        q_init = q if G is None else q * _gate(G, Dk).exp()  # q_t^T P(t0..t) = (q ⊙ exp(G_t))^T
        init = None if L0 == 0 else torch.einsum("bhtd,blhde->bhtle", q_init, p.S0)
        Y = None
        if L0:
            decay0 = 1.0 if G_last is None else _gate(G_last, Dk).exp()[..., None]
            Y = decay0 * p.S0.transpose(1, 2)  # [B, H, L0, Dk, Dv]
    else:
        A, k_end, init, Y = _delta_scores(p, q, k, p.S0)

    # §3.2: M^H_ts = lambda_t^(level(t, s)); O = (A ⊙ M^H) V
    lev = level_matrix(pos, pos).expand(B, H, T, T)
    o = (A * torch.gather(lam, -1, lev)) @ v  # [B, H, T, Dv]
    if init is not None and T:
        w0 = torch.gather(lam, -1, init_levels(pos, t0, L0).expand(B, H, T, L0))
        o = o + (w0[..., None] * init).sum(-2)
    o = o.transpose(1, 2)

    if not output_final_state:
        return o, None
    n1 = t1.bit_length()  # levels of the query at t1: level(t1, s) = bit_length(t1 XOR s) >= 1
    onehot = (level_matrix(torch.tensor([t1], device=q.device), pos)[0, :, None] - 1
              == torch.arange(n1, device=q.device)).to(q.dtype)  # [T, n1]
    S = torch.einsum("bhsd,bhse,sl->blhde", k_end, v, onehot)
    if L0:
        to = init_levels(torch.tensor([t1], device=q.device), t0, L0)[0] - 1  # [L0]
        S = S.index_add(1, to, Y.transpose(1, 2))
    return o, S


def _gate(G: Tensor, Dk: int) -> Tensor:
    """A cumulative log-gate as a per-key-dim one: [B, H, T] -> [B, H, T, 1] (broadcast over Dk)."""
    return G if G.dim() == 4 else G.unsqueeze(-1)


def _result(o: Tensor, S: Tensor | None, t1: int, like: Tensor):
    return o.to(like.dtype).contiguous(), (None if S is None else make_state(S, t1))


def naive_log_linear_attention(
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
    """Log-linear attention over linear attention (g None) or a gated base, by its matrix form.

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; lambda_levels: [B, T, H, L], L >= bit_length(t0+T-1)+1;
    g: None, [B, T, H] (per-head scalar, e.g. retention / Mamba-2) or [B, T, H, Dk] (GLA) log
    forget gate (<= 0); initial_state: FenwickState (S [B, bit_length(t0), H, Dk, Dv], t0).
    Returns o [B, T, H, Dv] and the final FenwickState or None.
    """
    p = prepare_linear("naive_log_linear_attention", q, k, v, lambda_levels, g, scale, initial_state)
    o, S = _naive(p, output_final_state)
    return _result(o, S, p.t0 + q.shape[1], q)


def naive_log_linear_gated_deltanet(
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
    """Log-linear Gated DeltaNet (§4.2) by its matrix form.

    q, k: [B, T, H, Dk] (k unit-norm, or ``use_qk_l2norm=True``); v: [B, T, H, Dv]; g: [B, T, H]
    log decay (<= 0); beta: [B, T, H] in [0, 2]; lambda_levels: [B, T, H, L]; initial_state:
    FenwickState. Returns o [B, T, H, Dv] and the final FenwickState or None.
    """
    p = prepare_delta("naive_log_linear_gated_deltanet", q, k, v, g, beta, lambda_levels, scale,
                      initial_state, use_qk_l2norm)
    o, S = _naive(p, output_final_state)
    return _result(o, S, p.t0 + q.shape[1], q)


def naive_log_linear_mamba2(
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
    """Log-linear Mamba-2 (§4.1): SSD with the hierarchical mask, by its matrix form.

    x: [B, T, H, P]; dt: [B, T, H] (>= 0); A: [H] (<= 0); B, C: [B, T, G, N], G | H; D: [H] or
    None; lambda_levels: [B, T, H, L]; initial_state: FenwickState (S [B, L0, H, P, N], t0).
    Returns y [B, T, H, P] and the final FenwickState (S [B, L1, H, P, N]) or None.
    """
    p = prepare_mamba2("naive_log_linear_mamba2", x, dt, A, B, C, D, lambda_levels, initial_state)
    o, S = _naive(p, output_final_state)
    y = mamba2_output(o, x, D)
    return _result(y, None if S is None else S.transpose(-1, -2), p.t0 + x.shape[1], x)


__all__ = [
    "naive_log_linear_attention",
    "naive_log_linear_gated_deltanet",
    "naive_log_linear_mamba2",
]

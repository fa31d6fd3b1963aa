"""RWKV-6 ("Finch") WKV from its definition (Peng et al. 2024, "Eagle and Finch: RWKV with
Matrix-Valued States and Dynamic Recurrence", Finch time mixing), per head:

    wkv_t = diag(u) k_t^T v_t + sum_{i<t} diag(prod_{j=i+1}^{t-1} w_j) k_i^T v_i     [K, V]
    o_t   = r_t wkv_t

with the data-dependent decay ``w_t = exp(-exp(d_t))`` in (0, 1), passed as its log
``w = log w_t = -exp(d_t) <= 0``. O(T^2 K V); the reference the other forms are tested against
(in float64: the decay products are ``exp`` of differences of cumulative log-decays).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.rwkv6.state import check_rwkv6, compute_dtype


def naive_rwkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    *,
    scale: float = 1.0,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """RWKV-6 WKV by the pairwise sum over earlier tokens.

    r, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; w: ``[B, T, H, K]`` log-decay (``<= 0``);
    u: ``[H, K]`` bonus of the current token; initial_state: ``S [B, H, K, V]`` (the sum over
    tokens before this call, an extra term ``i = -1`` decayed by all of ``w_0 .. w_{t-1}``).
    ``scale`` multiplies r (the paper has none: 1). Returns ``o [B, T, H, V]`` and, with
    ``output_final_state``, ``S_T = sum_{i<T} diag(prod_{j=i+1}^{T-1} w_j) k_i^T v_i`` (+ the
    decayed initial state).
    """
    B, T, H, K, _ = check_rwkv6("naive_rwkv6", r, k, v, w, u, initial_state)
    in_dtype, dtype = r.dtype, compute_dtype(r.dtype)
    r, k, v, w, u = (x.to(dtype) for x in (r, k, v, w, u))
    r = r * scale
    L = w.cumsum(1)  # [B, T, H, K] log prod_{j<=t} w_j
    L_prev = L - w  # log prod_{j<=t-1} w_j
    t = torch.arange(T, device=r.device)
    earlier = (t[None, :] < t[:, None])[None, :, :, None, None]  # [1, T(t), T(i), 1, 1]: i < t
    expo = L_prev[:, :, None] - L[:, None, :]  # [B, T(t), T(i), H, K] log prod_{j=i+1}^{t-1} w_j
    decay = torch.where(earlier, expo, float("-inf")).exp()  # masked before exp: no overflow
    scores = torch.einsum("bthk,bshk,btshk->bhts", r, k, decay)  # [B, H, T(t), T(i)]
    o = torch.einsum("bhts,bshv->bthv", scores, v)  # sum over i < t
    o = o + (r * u * k).sum(-1, keepdim=True) * v  # the current token: diag(u) k_t^T v_t
    if initial_state is not None:
        S0 = initial_state.to(dtype)
        o = o + torch.einsum("bthk,bhkv->bthv", r * L_prev.exp(), S0)
    final = None
    if output_final_state:
        total = L[:, -1] if T else r.new_zeros(B, H, K)  # [B, H, K] log prod_{j<T} w_j
        tail = (total[:, None] - L).exp()  # [B, T, H, K] prod_{j=i+1}^{T-1} w_j
        final = torch.einsum("bthk,bthv->bhkv", k * tail, v)
        if initial_state is not None:
            final = final + total.exp()[..., None] * S0
    return o.to(in_dtype), final

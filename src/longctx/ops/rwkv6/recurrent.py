"""RWKV-6 WKV, the recurrent (decode) form (Peng et al. 2024, Finch time mixing), per head:

    o_t = r_t (S + diag(u) k_t^T v_t)          S [K, V]: the sum over earlier tokens
    S  <- diag(w_t) S + k_t^T v_t              w_t = exp(log-decay) in (0, 1]
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.rwkv6.state import check_rwkv6, check_step, compute_dtype


def _step(r_t: Tensor, k_t: Tensor, v_t: Tensor, w_t: Tensor, u: Tensor,
          S: Tensor) -> tuple[Tensor, Tensor]:
    """Unchecked step: r_t, k_t, w_t ``[B, H, K]``, v_t ``[B, H, V]``, u ``[H, K]``,
    S ``[B, H, K, V]`` (r_t already scaled)."""
    kv = k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # [B, H, K, V] k_t^T v_t
    o = (r_t.unsqueeze(-2) @ (S + u.unsqueeze(-1) * kv)).squeeze(-2)  # [B, H, V]
    return o, w_t.exp().unsqueeze(-1) * S + kv


def rwkv6_step(
    r_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    w_t: Tensor,
    u: Tensor,
    state: Tensor | None,
    *,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """One decode step. r_t, k_t, w_t ``[B, H, K]`` (w_t the log-decay, ``<= 0``); v_t
    ``[B, H, V]``; u ``[H, K]``; state ``S [B, H, K, V]`` or None (zeros). Returns
    ``o_t [B, H, V]`` (r_t's dtype) and the new S (float32 for half inputs)."""
    op = "rwkv6_step"
    check_step(op, r_t, k_t, v_t, w_t)
    B, _, H, K, V = check_rwkv6(op, *(x.unsqueeze(1) for x in (r_t, k_t, v_t, w_t)), u, state)
    in_dtype, dtype = r_t.dtype, compute_dtype(r_t.dtype)
    S = r_t.new_zeros(B, H, K, V, dtype=dtype) if state is None else state.to(dtype)
    r_t, k_t, v_t, w_t, u = (x.to(dtype) for x in (r_t, k_t, v_t, w_t, u))
    o, S = _step(r_t * scale, k_t, v_t, w_t, u, S)
    return o.to(in_dtype), S


def recurrent_rwkv6(
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
    """Token-by-token RWKV-6: shapes and arguments as in ``naive_rwkv6``."""
    B, T, H, K, V = check_rwkv6("recurrent_rwkv6", r, k, v, w, u, initial_state)
    in_dtype, dtype = r.dtype, compute_dtype(r.dtype)
    S = r.new_zeros(B, H, K, V, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    r, k, v, w, u = (x.to(dtype) for x in (r, k, v, w, u))
    r = r * scale
    outs = []
    for t in range(T):
        o_t, S = _step(r[:, t], k[:, t], v[:, t], w[:, t], u, S)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, V)  # [B, T, H, V]
    return o.to(in_dtype), (S if output_final_state else None)

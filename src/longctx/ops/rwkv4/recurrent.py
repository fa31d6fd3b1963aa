"""WKV one token at a time, numerically stable (Peng et al. 2023, the RNN form of the WKV
operator with the running maximum exponent of the paper's appendix; also the reference
implementation's inference form): the state keeps ``a, b`` scaled by ``e^{-p}`` with ``p`` the
running maximum exponent, so no ``exp`` overflows.

    q = max(p, u + k_t);   wkv_t = (e^{p-q} a + e^{u+k_t-q} v_t) / (e^{p-q} b + e^{u+k_t-q})
    q' = max(p - w, k_t);  a <- e^{p-w-q'} a + e^{k_t-q'} v_t;  b <- e^{p-w-q'} b + e^{k_t-q'};
    p <- q'
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.rwkv4.state import WKVState, check_wkv, compute_dtype


def empty_state(B: int, C: int, like: Tensor) -> WKVState:
    """No earlier tokens: ``a = b = 0`` and ``p = -inf`` would be exact; a very negative ``p``
    keeps the arithmetic finite (its terms are multiplied by exactly zero)."""
    zeros = like.new_zeros(B, C)
    p = torch.full_like(zeros, -1e38 if like.dtype != torch.float16 else -6e4)
    return zeros, zeros.clone(), p


def wkv_step(k_t: Tensor, v_t: Tensor, w: Tensor, u: Tensor,
             state: WKVState | None) -> tuple[Tensor, WKVState]:
    """One token: ``k_t, v_t [B, C]``, ``w [C] > 0``, ``u [C]``, state ``(a, b, p)`` of ``[B, C]``
    or None (no earlier tokens) -> ``(wkv_t [B, C], new state)`` (float32 for half inputs)."""
    for name, t in (("k_t", k_t), ("v_t", v_t)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"wkv_step: {name} for one decode step must be [B, C], got {shape}")
    B, _, C = check_wkv("wkv_step", k_t[:, None], v_t[:, None], w, u, state)
    in_dtype, dtype = k_t.dtype, compute_dtype(k_t.dtype)
    k_t, v_t, w, u = (x.to(dtype) for x in (k_t, v_t, w, u))
    a, b, p = empty_state(B, C, k_t) if state is None else (s.to(dtype) for s in state)
    q = torch.maximum(p, u + k_t)
    e1, e2 = torch.exp(p - q), torch.exp(u + k_t - q)
    out = ((e1 * a + e2 * v_t) / (e1 * b + e2)).to(in_dtype)
    q2 = torch.maximum(p - w, k_t)
    e1, e2 = torch.exp(p - w - q2), torch.exp(k_t - q2)
    return out, (e1 * a + e2 * v_t, e1 * b + e2, q2)


def recurrent_wkv(k: Tensor, v: Tensor, w: Tensor, u: Tensor, initial_state: WKVState | None = None,
                  output_final_state: bool = False) -> tuple[Tensor, WKVState | None]:
    """The token loop of ``wkv_step`` over ``k, v [B, T, C]``."""
    check_wkv("recurrent_wkv", k, v, w, u, initial_state)
    state, outs = initial_state, []
    for t in range(k.shape[1]):
        o, state = wkv_step(k[:, t], v[:, t], w, u, state)
        outs.append(o)
    out = torch.stack(outs, 1) if outs else k.new_zeros(k.shape)
    if state is None:
        state = empty_state(k.shape[0], k.shape[2], k.new_zeros((), dtype=compute_dtype(k.dtype)))
    return out, (state if output_final_state else None)

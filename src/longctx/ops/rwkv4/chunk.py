"""WKV in chunks (the training form): inside a chunk of ``c`` tokens the pairwise weights
``e^{-(t-1-i) w + k_i}`` are one ``[c, c, C]`` tensor; the earlier stream enters through the
state ``(a, b, p)`` with weight ``e^{-(t - t0) w + p}``. Every exponent is shifted by its row's
maximum (the stable form of the recurrence, applied to a block), so float32 does not overflow
for large ``k``; the chunk's final state is carried to the next. O(T c C).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common import check_chunk_size
from longctx.ops.rwkv4.recurrent import empty_state
from longctx.ops.rwkv4.state import WKVState, check_wkv, compute_dtype


def _chunk(k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: WKVState) -> tuple[Tensor, WKVState]:
    a, b, p = state  # [B, C]
    c = k.shape[1]
    t = torch.arange(c, device=k.device)
    dist = (t[:, None] - 1 - t[None, :]).to(k.dtype)  # t - 1 - i
    past = (t[None, :] < t[:, None])[:, :, None]  # [c, c, 1]
    neg = torch.finfo(k.dtype).min
    logit = torch.where(past, -dist[:, :, None] * w + k[:, None], neg)  # [B, c(t), c(i), C]
    self_logit = u + k  # [B, c, C]
    state_logit = -t[:, None].to(k.dtype) * w + p[:, None]  # [B, c, C]
    m = torch.maximum(logit.amax(2), torch.maximum(self_logit, state_logit))  # [B, c, C]
    e = torch.exp(logit - m[:, :, None])
    es, eu = torch.exp(state_logit - m), torch.exp(self_logit - m)
    num = (e * v[:, None]).sum(2) + eu * v + es * a[:, None]
    den = e.sum(2) + eu + es * b[:, None]
    # state after the chunk: e^{-c w} (a, b) e^p + sum_i e^{-(c-1-i) w + k_i} (v_i, 1)
    tail = -(c - 1 - t)[:, None].to(k.dtype) * w + k  # [B, c, C]
    p_new = torch.maximum(p - c * w, tail.amax(1))
    et, ep = torch.exp(tail - p_new[:, None]), torch.exp(p - c * w - p_new)
    return num / den, ((et * v).sum(1) + ep * a, et.sum(1) + ep * b, p_new)


def chunk_wkv(k: Tensor, v: Tensor, w: Tensor, u: Tensor, initial_state: WKVState | None = None,
              output_final_state: bool = False,
              chunk_size: int = 32) -> tuple[Tensor, WKVState | None]:
    """``k, v [B, T, C]``, ``w [C] > 0``, ``u [C]``, state ``(a, b, p)`` of ``[B, C]`` or None
    -> ``(wkv [B, T, C], state (a, b, p) or None)`` (the state in float32 for half inputs)."""
    B, T, C = check_wkv("chunk_wkv", k, v, w, u, initial_state)
    check_chunk_size(chunk_size)
    in_dtype, dtype = k.dtype, compute_dtype(k.dtype)
    k, v, w, u = (x.to(dtype) for x in (k, v, w, u))
    state = (tuple(s.to(dtype) for s in initial_state) if initial_state is not None
             else empty_state(B, C, k))
    outs = []
    for s in range(0, T, chunk_size):
        o, state = _chunk(k[:, s:s + chunk_size], v[:, s:s + chunk_size], w, u, state)
        outs.append(o)
    out = torch.cat(outs, 1).to(in_dtype) if outs else k.new_zeros(k.shape, dtype=in_dtype)
    return out, (state if output_final_state else None)

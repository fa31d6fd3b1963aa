"""Softmax attention, the O(T^2) definition (Vaswani et al. 2017, "Attention Is All You Need",
Eq. 1): ``o = softmax(scale * q k^T + causal_mask + alibi_bias) v``; ALiBi as in Press et al.
2022 (bias ``-m_h * |i - j|``), and ``causal=False`` drops the mask (bidirectional).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_bidirectional, check_qkv, default_scale
from longctx.ops.softmax_attention.bias import alibi_bias, check_alibi_slopes
from longctx.ops.softmax_attention.state import KVCache, check_kv_cache


def naive_softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    initial_state: KVCache | None = None,
    output_final_state: bool = False,
    alibi_slopes: Tensor | None = None,
    causal: bool = True,
) -> tuple[Tensor, KVCache | None]:
    """Softmax attention with an optional KV cache, ALiBi bias and bidirectional form.

    q ``[B, T, H, D]``, k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]`` (GQA: query head h reads kv
    head ``h // (H // Hk)``). ``initial_state = (k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv])``
    holds the S previous tokens: the new queries sit at positions S..S+T-1 and see every cached
    key plus the new keys up to their own position. Returns ``o [B, T, H, Dv]`` and, with
    ``output_final_state``, the cache with the new keys/values appended ``[B, S+T, Hk, *]``.

    ``alibi_slopes [H]`` (one per query head, e.g. ``longctx.position.alibi_slopes(H)``) adds
    ``-slope_h * |i - j|`` to the score of query position i and key position j (absolute:
    the cache's keys at 0..S-1, the new queries/keys at S..S+T-1). ``causal=False`` is full
    bidirectional attention (every query sees every key); it takes and returns no state.
    """
    op = "naive_softmax_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    check_bidirectional(op, causal, initial_state, output_final_state)
    slopes = check_alibi_slopes(op, alibi_slopes, H, q)
    scale = default_scale(scale, D)
    cache = check_kv_cache(op, initial_state, B, Hk, D, Dv, q)
    if cache is not None:
        k = torch.cat([cache[0], k], dim=1)  # [B, S+T, Hk, D]
        v = torch.cat([cache[1], v], dim=1)  # [B, S+T, Hk, Dv]
    S, L = k.shape[1] - T, k.shape[1]

    group = H // Hk
    k_h = k.repeat_interleave(group, dim=2)  # [B, L, H, D]
    v_h = v.repeat_interleave(group, dim=2)  # [B, L, H, Dv]

    scores = scale * torch.einsum("bthd,bshd->bhts", q, k_h)  # [B, H, T, L]
    q_pos = S + torch.arange(T, device=q.device)
    k_pos = torch.arange(L, device=q.device)
    if slopes is not None:  # Press et al. 2022: scores + m_h * (-|i - j|)
        scores = scores + alibi_bias(slopes, q_pos[:, None] - k_pos[None, :], scores.dtype)
    if causal:
        future = k_pos[None, :] > q_pos[:, None]  # [T, L]: key after query -> masked
        scores = scores.masked_fill(future, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    o = torch.einsum("bhts,bshd->bthd", p, v_h)  # [B, T, H, Dv]
    return o, ((k, v) if output_final_state else None)

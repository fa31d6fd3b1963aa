"""Causal softmax attention, decode form: one token at a time against a growing KV cache
(optionally with the ALiBi bias of Press et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_qkv, check_step_qkv, default_scale
from longctx.ops.softmax_attention.bias import alibi_bias, check_alibi_slopes
from longctx.ops.softmax_attention.state import KVCache, check_kv_cache


def _step(q_t: Tensor, k_t: Tensor, v_t: Tensor, state: KVCache | None, scale: float,
          slopes: Tensor | None = None):
    """Unchecked step; shapes as in ``softmax_attention_step``."""
    B, H, D = q_t.shape
    Hk = k_t.shape[1]
    k_new, v_new = k_t[:, None], v_t[:, None]  # [B, 1, Hk, *]
    if state is not None:
        k_new = torch.cat([state[0], k_new], dim=1)  # [B, S+1, Hk, D]
        v_new = torch.cat([state[1], v_new], dim=1)  # [B, S+1, Hk, Dv]
    q_g = q_t.reshape(B, Hk, H // Hk, D)  # [B, Hk, G, D]: query head h reads kv head h // G
    scores = scale * torch.einsum("bhgd,bshd->bhgs", q_g, k_new)  # [B, Hk, G, S+1]
    if slopes is not None:  # the new token sits at position S: bias -m_h * (S - j)
        L = k_new.shape[1]
        dist = (L - 1) - torch.arange(L, device=q_t.device)  # [S+1]
        scores = scores + alibi_bias(slopes, dist, scores.dtype).reshape(Hk, H // Hk, L)
    p = torch.softmax(scores, dim=-1)  # the newest token sees every cached key: no mask
    o_t = torch.einsum("bhgs,bshd->bhgd", p, v_new).reshape(B, H, -1)  # [B, H, Dv]
    return o_t, (k_new, v_new)


def softmax_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    state: KVCache | None,
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
) -> tuple[Tensor, KVCache]:
    """One decode step: q_t ``[B, H, D]``, k_t ``[B, Hk, D]``, v_t ``[B, Hk, Dv]``.

    ``state`` is the KV cache ``(k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv])`` or ``None``
    before the first token. Returns ``o_t [B, H, Dv]`` and the cache with this token appended
    ``[B, S+1, Hk, *]`` (a new tensor; the input cache is not modified). ``alibi_slopes [H]``:
    the token is at position S, the cached keys at 0..S-1 (bias ``-slope_h * (S - j)``).
    """
    op = "softmax_attention_step"
    B, _, H, Hk, D, Dv = check_step_qkv(op, q_t, k_t, v_t, allow_gqa=True)
    slopes = check_alibi_slopes(op, alibi_slopes, H, q_t)
    state = check_kv_cache(op, state, B, Hk, D, Dv, q_t)
    return _step(q_t, k_t, v_t, state, default_scale(scale, D), slopes)


def recurrent_softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    initial_state: KVCache | None = None,
    output_final_state: bool = False,
    alibi_slopes: Tensor | None = None,
) -> tuple[Tensor, KVCache | None]:
    """Causal softmax attention by looping ``softmax_attention_step`` over the T tokens.

    Arguments, state and result as in ``naive_softmax_attention`` (causal only).
    """
    op = "recurrent_softmax_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    slopes = check_alibi_slopes(op, alibi_slopes, H, q)
    scale = default_scale(scale, D)
    state = check_kv_cache(op, initial_state, B, Hk, D, Dv, q)
    outs = []
    for t in range(T):
        o_t, state = _step(q[:, t], k[:, t], v[:, t], state, scale, slopes)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, Dv)  # [B, T, H, Dv]
    if state is None:  # T == 0 and no cache: the empty cache
        state = (k, v)
    return o, (state if output_final_state else None)

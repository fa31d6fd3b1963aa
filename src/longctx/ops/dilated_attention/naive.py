"""Dilated attention, the definition written plainly (Ding et al. 2023, "LongNet", §2.2–2.3):
one masked ``T x T`` logit matrix per (segment length w, dilation rate r), a softmax each, and
the outputs mixed with weights proportional to their softmax denominators.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_bidirectional, check_qkv, default_scale
from longctx.ops.dilated_attention.common import (
    RingState,
    check_ring,
    check_segments,
    empty_ring,
    masked_attention,
    mix_by_denominators,
    positions_mask,
)
from longctx.ops.sliding_window_attention.state import past_to_ring, ring_to_past


def naive_dilated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    segment_lengths: tuple[int, ...],
    dilation_rates: tuple[int, ...],
    causal: bool = True,
    scale: float | None = None,
    initial_state: RingState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, RingState | None]:
    """Multi-head dilated attention, mixed over the (w, r) pairs by softmax denominators.

    q ``[B, T, H, D]``, k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]`` (GQA: query head h reads kv head
    ``h // (H // Hk)``; head h uses offset ``h mod r``). ``segment_lengths`` w_i and
    ``dilation_rates`` r_i are paired. Segments are counted from absolute position 0. State
    (causal only): a ring buffer of the last ``W = max(segment_lengths)`` keys/values,
    ``(k_buf [B, W, Hk, D], v_buf [B, W, Hk, Dv], n_seen int64 [])``. Returns
    ``(o [B, T, H, Dv], final_state)``.
    """
    op = "naive_dilated_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    pairs = check_segments(segment_lengths, dilation_rates)
    causal = check_bidirectional(op, causal, initial_state, output_final_state)
    scale = default_scale(scale, D)
    W = max(w for w, _ in pairs)
    state = check_ring(op, initial_state, B, W, Hk, D, Dv, q)
    if state is None:
        state = empty_ring(B, W, Hk, D, Dv, q)
    n_seen = state[2]
    k_past, v_past, past_valid = ring_to_past(*state)  # positions n_seen - W .. n_seen - 1

    k_all = torch.cat([k_past, k], dim=1)  # [B, W+T, Hk, D]; key j <-> position n_seen - W + j
    v_all = torch.cat([v_past, v], dim=1)  # [B, W+T, Hk, Dv]
    group = H // Hk
    k_h = k_all.repeat_interleave(group, dim=2)  # [B, W+T, H, D]
    v_h = v_all.repeat_interleave(group, dim=2).transpose(1, 2)  # [B, H, W+T, Dv]
    scores = scale * torch.einsum("bthd,bshd->bhts", q, k_h)  # [B, H, T, W+T]

    device = q.device
    pos_q = n_seen + torch.arange(T, device=device)  # absolute positions of the queries
    pos_k = n_seen - W + torch.arange(W + T, device=device)
    key_valid = torch.cat([past_valid, past_valid.new_ones(T)])  # positions < 0: no key
    heads = torch.arange(H, device=device)
    outs, lses = [], []
    for w, r in pairs:  # O|_{r_i, w_i}: one sparse pattern, its own softmax
        mask = positions_mask(pos_q, pos_k, key_valid, heads, w, r, causal)  # [H, T, W+T]
        o_i, lse_i = masked_attention(scores, mask[None], v_h)  # [B, H, T, Dv], [B, H, T]
        outs.append(o_i)
        lses.append(lse_i)
    o = mix_by_denominators(outs, lses).transpose(1, 2)  # [B, T, H, Dv]

    final = None
    if output_final_state:  # the last W keys: positions n_seen + T - W .. n_seen + T - 1
        final = past_to_ring(k_all[:, T:], v_all[:, T:], n_seen + T)
    return o, final


__all__ = ["naive_dilated_attention"]

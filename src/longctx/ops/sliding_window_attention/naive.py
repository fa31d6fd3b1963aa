"""Sliding-window attention, the definition with an explicit band mask (Beltagy et al. 2020,
"Longformer", Sec. 3.1; Child et al. 2019): causal, query t attends to keys j with t - w < j <= t;
bidirectional (``causal=False``), to keys with |t - j| < w (Longformer's symmetric window).
Optional ALiBi bias ``-m_h * |t - j|`` (Press et al. 2022).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import (
    check_bidirectional,
    check_positive_int,
    check_qkv,
    default_scale,
)
from longctx.ops.sliding_window_attention.state import (
    RingState,
    check_ring_state,
    empty_ring,
    past_to_ring,
    ring_to_past,
)
from longctx.ops.softmax_attention.bias import alibi_bias, check_alibi_slopes


def naive_sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    scale: float | None = None,
    initial_state: RingState | None = None,
    output_final_state: bool = False,
    alibi_slopes: Tensor | None = None,
    causal: bool = True,
) -> tuple[Tensor, RingState | None]:
    """Sliding-window softmax attention over the last ``window`` positions.

    q ``[B, T, H, D]``, k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]`` (GQA: query head h reads kv
    head ``h // (H // Hk)``). State: ring buffer ``(k_buf [B, w, Hk, D], v_buf [B, w, Hk, Dv],
    n_seen int64 [])``; ``None`` is the empty buffer. Returns ``o [B, T, H, Dv]`` and, with
    ``output_final_state``, the ring buffer after the T new tokens.

    ``alibi_slopes [H]`` (one per query head) adds ``-slope_h * |i - j|`` to the score of query
    position i and key position j (absolute positions: the state's ``n_seen`` tokens come first).
    ``causal=False``: query i sees keys with ``|i - j| < window`` (a symmetric window of
    ``2 * window - 1`` keys, Longformer-style); it takes and returns no state.
    """
    op = "naive_sliding_window_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    w = check_positive_int("window", window)
    check_bidirectional(op, causal, initial_state, output_final_state)
    slopes = check_alibi_slopes(op, alibi_slopes, H, q)
    scale = default_scale(scale, D)
    state = check_ring_state(op, initial_state, B, w, Hk, D, Dv, q)
    if state is None:
        state = empty_ring(B, w, Hk, D, Dv, q)
    n_seen = state[2]
    k_past, v_past, past_valid = ring_to_past(*state)  # positions n_seen - w .. n_seen - 1

    # All keys in time order: index j <-> absolute position n_seen - w + j; query i <-> n_seen + i.
    k_all = torch.cat([k_past, k], dim=1)  # [B, w+T, Hk, D]
    v_all = torch.cat([v_past, v], dim=1)  # [B, w+T, Hk, Dv]
    group = H // Hk
    k_h = k_all.repeat_interleave(group, dim=2)  # [B, w+T, H, D]
    v_h = v_all.repeat_interleave(group, dim=2)  # [B, w+T, H, Dv]

    scores = scale * torch.einsum("bthd,bshd->bhts", q, k_h)  # [B, H, T, w+T]
    i = torch.arange(T, device=q.device)[:, None]
    j = torch.arange(w + T, device=q.device)[None, :]
    key_valid = torch.cat([past_valid, past_valid.new_ones(T)])[None, :]  # unwritten slots: no
    dist = (w + i) - j  # [T, w+T]: query position (n+i) minus key position (n-w+j)
    if causal:
        band = (dist >= 0) & (dist < w) & key_valid  # (n+i) - w < (n-w+j) <= n+i
    else:
        band = (dist.abs() < w) & key_valid  # |i - j| < w (no state: the past rows are invalid)
    if slopes is not None:  # Press et al. 2022: scores + m_h * (-|i - j|)
        scores = scores + alibi_bias(slopes, dist, scores.dtype)
    scores = scores.masked_fill(~band, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    o = torch.einsum("bhts,bshd->bthd", p, v_h)  # [B, T, H, Dv]

    final = None
    if output_final_state:  # the last w keys are positions n_seen + T - w .. n_seen + T - 1
        final = past_to_ring(k_all[:, T:], v_all[:, T:], n_seen + T)
    return o, final

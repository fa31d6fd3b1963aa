"""Dilated attention, decode form: a ring buffer of the last ``W = max(segment_lengths)``
keys/values (position p in slot ``p mod W``). It holds the current segment of every (w, r), since
a query at position n only sees keys at positions >= n - (n mod w) > n - W; so decode memory is
``W`` tokens whatever the stream length."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_qkv, check_step_qkv, default_scale
from longctx.ops.dilated_attention.common import (
    RingState,
    check_ring,
    check_segments,
    empty_ring,
    masked_attention,
    mix_by_denominators,
    positions_mask,
)


def _step(q_t: Tensor, k_t: Tensor, v_t: Tensor, state: RingState, pairs, scale: float):
    """Unchecked step; shapes as in ``dilated_attention_step``."""
    B, H, D = q_t.shape
    k_buf, v_buf, n = state
    W, Hk = k_buf.shape[1], k_buf.shape[2]
    slots = torch.arange(W, device=q_t.device)
    write = (slots == n % W)[None, :, None, None]  # this token goes to slot n mod W
    slot_pos = n - (n - slots) % W  # the position slot s holds after the write (< 0: empty)
    filled = slot_pos >= 0
    keep = filled[None, :, None, None]
    k_buf = torch.where(keep, torch.where(write, k_t[:, None], k_buf), 0.0)  # [B, W, Hk, D]
    v_buf = torch.where(keep, torch.where(write, v_t[:, None], v_buf), 0.0)  # [B, W, Hk, Dv]

    q_g = q_t.reshape(B, Hk, H // Hk, D)  # [B, Hk, G, D]: query head h reads kv head h // G
    scores = scale * torch.einsum("bhgd,bshd->bhgs", q_g, k_buf)  # [B, Hk, G, W]
    v_h = v_buf.transpose(1, 2)[:, :, None]  # [B, Hk, 1, W, Dv]
    heads = torch.arange(H, device=q_t.device)
    outs, lses = [], []
    for w, r in pairs:
        mask = positions_mask(n[None], slot_pos, filled, heads, w, r, causal=True)  # [H, 1, W]
        o_i, lse_i = masked_attention(scores[..., None, :], mask.reshape(Hk, -1, 1, W), v_h)
        outs.append(o_i[..., 0, :])  # [B, Hk, G, Dv]
        lses.append(lse_i[..., 0])  # [B, Hk, G]
    o_t = mix_by_denominators(outs, lses).reshape(B, H, -1)  # [B, H, Dv]
    return o_t, (k_buf, v_buf, n + 1)


def dilated_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    state: RingState | None,
    segment_lengths: tuple[int, ...],
    dilation_rates: tuple[int, ...],
    scale: float | None = None,
) -> tuple[Tensor, RingState]:
    """One causal decode step: q_t ``[B, H, D]``, k_t ``[B, Hk, D]``, v_t ``[B, Hk, Dv]``.

    ``state = (k_buf [B, W, Hk, D], v_buf [B, W, Hk, Dv], n_seen int64 [])`` with
    ``W = max(segment_lengths)``, or ``None`` (empty). Returns ``o_t [B, H, Dv]`` and the new state
    (new tensors; the input is not modified).
    """
    op = "dilated_attention_step"
    B, _, _, Hk, D, Dv = check_step_qkv(op, q_t, k_t, v_t, allow_gqa=True)
    pairs = check_segments(segment_lengths, dilation_rates)
    W = max(w for w, _ in pairs)
    state = check_ring(op, state, B, W, Hk, D, Dv, q_t)
    if state is None:
        state = empty_ring(B, W, Hk, D, Dv, q_t)
    return _step(q_t, k_t, v_t, state, pairs, default_scale(scale, D))


def recurrent_dilated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    segment_lengths: tuple[int, ...],
    dilation_rates: tuple[int, ...],
    scale: float | None = None,
    initial_state: RingState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, RingState | None]:
    """Causal dilated attention by looping ``dilated_attention_step`` over the T tokens.

    Arguments, state and result as in ``naive_dilated_attention`` (causal only).
    """
    op = "recurrent_dilated_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    pairs = check_segments(segment_lengths, dilation_rates)
    scale = default_scale(scale, D)
    W = max(w for w, _ in pairs)
    state = check_ring(op, initial_state, B, W, Hk, D, Dv, q)
    if state is None:
        state = empty_ring(B, W, Hk, D, Dv, q)
    outs = []
    for t in range(T):
        o_t, state = _step(q[:, t], k[:, t], v[:, t], state, pairs, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, Dv)  # [B, T, H, Dv]
    return o, (state if output_final_state else None)


__all__ = ["dilated_attention_step", "recurrent_dilated_attention"]

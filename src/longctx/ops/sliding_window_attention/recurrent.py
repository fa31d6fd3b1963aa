"""Causal sliding-window attention, decode form: one token at a time into a ring buffer of w
slots (the token at position p is written to slot p % w, overwriting position p - w); optional
ALiBi bias (Press et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import (
    check_positive_int,
    check_qkv,
    check_step_qkv,
    default_scale,
)
from longctx.ops.sliding_window_attention.state import RingState, check_ring_state, empty_ring
from longctx.ops.softmax_attention.bias import alibi_bias, check_alibi_slopes


def _step(q_t: Tensor, k_t: Tensor, v_t: Tensor, state: RingState, scale: float,
          slopes: Tensor | None = None):
    """Unchecked step; shapes as in ``sliding_window_attention_step``."""
    B, H, D = q_t.shape
    k_buf, v_buf, n_seen = state
    w, Hk = k_buf.shape[1], k_buf.shape[2]
    slots = torch.arange(w, device=q_t.device)
    write = (slots == n_seen % w)[None, :, None, None]  # this token goes to slot n_seen % w
    filled = (slots < n_seen + 1)[None, :, None, None]  # slots written so far (all once n >= w)
    k_buf = torch.where(filled, torch.where(write, k_t[:, None], k_buf), 0.0)  # [B, w, Hk, D]
    v_buf = torch.where(filled, torch.where(write, v_t[:, None], v_buf), 0.0)  # [B, w, Hk, Dv]

    q_g = q_t.reshape(B, Hk, H // Hk, D)  # [B, Hk, G, D]
    scores = scale * torch.einsum("bhgd,bshd->bhgs", q_g, k_buf)  # [B, Hk, G, w]
    if slopes is not None:  # slot s holds position n_seen - ((n_seen - s) % w): bias -m * distance
        dist = (n_seen - slots) % w  # [w]
        scores = scores + alibi_bias(slopes, dist, scores.dtype).reshape(Hk, H // Hk, w)
    scores = scores.masked_fill(~filled[:, :, 0, 0][:, None, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)  # softmax is order-free: slot order needs no unrolling
    o_t = torch.einsum("bhgs,bshd->bhgd", p, v_buf).reshape(B, H, -1)  # [B, H, Dv]
    return o_t, (k_buf, v_buf, n_seen + 1)


def sliding_window_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    state: RingState | None,
    window: int,
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
) -> tuple[Tensor, RingState]:
    """One decode step: q_t ``[B, H, D]``, k_t ``[B, Hk, D]``, v_t ``[B, Hk, Dv]``.

    ``state = (k_buf [B, w, Hk, D], v_buf [B, w, Hk, Dv], n_seen int64 [])`` or ``None`` (empty).
    Returns ``o_t [B, H, Dv]`` and the new state (new tensors; the input is not modified).
    ``alibi_slopes [H]``: the token sits at position ``n_seen`` (bias ``-slope_h * (n_seen - j)``).
    """
    op = "sliding_window_attention_step"
    B, _, H, Hk, D, Dv = check_step_qkv(op, q_t, k_t, v_t, allow_gqa=True)
    w = check_positive_int("window", window)
    slopes = check_alibi_slopes(op, alibi_slopes, H, q_t)
    state = check_ring_state(op, state, B, w, Hk, D, Dv, q_t)
    if state is None:
        state = empty_ring(B, w, Hk, D, Dv, q_t)
    return _step(q_t, k_t, v_t, state, default_scale(scale, D), slopes)


def recurrent_sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    scale: float | None = None,
    initial_state: RingState | None = None,
    output_final_state: bool = False,
    alibi_slopes: Tensor | None = None,
) -> tuple[Tensor, RingState | None]:
    """Sliding-window attention by looping ``sliding_window_attention_step`` over T tokens.

    Arguments, state and result as in ``naive_sliding_window_attention`` (causal only).
    """
    op = "recurrent_sliding_window_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    w = check_positive_int("window", window)
    slopes = check_alibi_slopes(op, alibi_slopes, H, q)
    scale = default_scale(scale, D)
    state = check_ring_state(op, initial_state, B, w, Hk, D, Dv, q)
    if state is None:
        state = empty_ring(B, w, Hk, D, Dv, q)
    outs = []
    for t in range(T):
        o_t, state = _step(q[:, t], k[:, t], v[:, t], state, scale, slopes)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, Dv)  # [B, T, H, Dv]
    return o, (state if output_final_state else None)

"""Dilated attention in segment form (Ding et al. 2023, "LongNet", §2.2–2.3): for each
(w, r), split the sequence into segments of w rows, gather every r-th row of each segment (head
h from offset ``h mod r``), attend inside each sparsified segment, scatter back, then mix the
(w, r) outputs by their softmax denominators. No ``T x T`` matrix: the scores of one (w, r) are
``[B, T/w, H, w/r, w/r]``, i.e. ``T * w / r^2`` per head. Plain autograd. Derivation in README.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.ops.common.checks import check_bidirectional, check_qkv, default_scale
from longctx.ops.dilated_attention.common import (
    RingState,
    check_ring,
    check_segments,
    empty_ring,
    masked_attention,
    mix_by_denominators,
)
from longctx.ops.sliding_window_attention.state import past_to_ring, ring_to_past


def _segments(x: Tensor, w: int, r: int) -> Tensor:
    """``[B, L, ...] -> [B, n_seg, ceil(w / r), r, ...]`` (L a multiple of w); each segment is
    zero-padded to a multiple of r, so row ``(i, rho)`` is segment offset ``u = i * r + rho``."""
    B, L = x.shape[:2]
    x = x.reshape(B, L // w, w, *x.shape[2:])
    pad = (-w) % r
    if pad:
        x = F.pad(x, [0, 0] * (x.dim() - 3) + [0, pad])
    return x.reshape(B, L // w, (w + pad) // r, r, *x.shape[3:])


def _unsegment(x: Tensor, w: int, L: int) -> Tensor:
    """Inverse of ``_segments``: ``[B, n_seg, m, r, ...] -> [B, L, ...]`` (drops the padding)."""
    B, n_seg, m, r = x.shape[:4]
    x = x.reshape(B, n_seg, m * r, *x.shape[4:])[:, :, :w]
    return x.reshape(B, L, *x.shape[3:])


def _one_pattern(q, k, v, valid, w, r, group, scale, causal):
    """Attention of one (w, r) on a segment-aligned sequence: q ``[B, L, H, D]``, k ``[B, L, Hk,
    D]``, v ``[B, L, Hk, Dv]``, ``valid [L]`` (key exists); L a multiple of w. Returns
    ``o [B, L, H, Dv]`` (0 on rows the head skips) and ``lse [B, L, H]`` (−inf there)."""
    L, H = q.shape[1:3]
    heads = torch.arange(H, device=q.device)
    rho = heads % r  # LongNet §2.3: head h keeps the rows at offset h mod r of each segment
    kv_head = heads // group
    q_s = _segments(q, w, r)[:, :, :, rho, heads]  # [B, n_seg, m, H, D] sparsified segments
    k_s = _segments(k, w, r)[:, :, :, rho, kv_head]  # [B, n_seg, m, H, D]
    v_s = _segments(v, w, r)[:, :, :, rho, kv_head]  # [B, n_seg, m, H, Dv]
    ok = _segments(valid.to(q.dtype)[None, :, None], w, r)[0, ..., 0] > 0  # [n_seg, m, r]
    ok = ok[:, :, rho]  # [n_seg, m, H]; padding rows are False

    scores = scale * torch.einsum("bsihd,bsjhd->bshij", q_s, k_s)  # [B, n_seg, H, m, m]
    mask = ok.permute(0, 2, 1)[None, :, :, None, :]  # [1, n_seg, H, 1, m]
    if causal:  # rows of a sparsified segment are in time order
        m = scores.shape[-1]
        mask = mask & torch.ones(m, m, dtype=torch.bool, device=q.device).tril()
    o_s, lse_s = masked_attention(scores, mask, v_s.transpose(2, 3))  # [B, n_seg, H, m, *]

    keep = rho[None, :] == torch.arange(r, device=q.device)[:, None]  # [r, H]: scatter pattern
    o = o_s.permute(0, 1, 3, 2, 4)[:, :, :, None] * keep[:, :, None]  # [B, n_seg, m, r, H, Dv]
    lse = torch.where(keep, lse_s.permute(0, 1, 3, 2)[:, :, :, None], float("-inf"))
    return _unsegment(o, w, L), _unsegment(lse, w, L)


def chunk_dilated_attention(
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
    """Dilated attention by gathering sparsified segments; arguments, state and result as in
    ``naive_dilated_attention``. The segments are the blocks (there is no ``chunk_size``).

    With a state, ``n_seen`` is read on the host once (segment alignment depends on it).
    """
    op = "chunk_dilated_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    pairs = check_segments(segment_lengths, dilation_rates)
    causal = check_bidirectional(op, causal, initial_state, output_final_state)
    scale = default_scale(scale, D)
    W = max(w for w, _ in pairs)
    state = check_ring(op, initial_state, B, W, Hk, D, Dv, q)
    if state is None:
        state = empty_ring(B, W, Hk, D, Dv, q)
    n_seen = state[2]
    n = int(n_seen)
    k_past, v_past, _ = ring_to_past(*state)  # positions n - W .. n - 1
    group = H // Hk

    outs, lses = [], []
    for w, r in pairs:
        a = n % w  # tokens of the current segment already seen: positions n - a .. n - 1
        L = -(-(a + T) // w) * w  # the sequence from the segment start, padded to segments
        pad = L - a - T
        q_seq = F.pad(q, [0, 0, 0, 0, a, pad])  # [B, L, H, D]; the a past rows are dummies
        k_seq = F.pad(torch.cat([k_past[:, W - a:], k], dim=1), [0, 0, 0, 0, 0, pad])
        v_seq = F.pad(torch.cat([v_past[:, W - a:], v], dim=1), [0, 0, 0, 0, 0, pad])
        valid = torch.arange(L, device=q.device) < a + T
        o_i, lse_i = _one_pattern(q_seq, k_seq, v_seq, valid, w, r, group, scale, causal)
        outs.append(o_i[:, a:a + T])  # [B, T, H, Dv]
        lses.append(lse_i[:, a:a + T])  # [B, T, H]
    o = mix_by_denominators(outs, lses)

    final = None
    if output_final_state:
        k_all = torch.cat([k_past, k], dim=1)  # [B, W+T, Hk, D]
        v_all = torch.cat([v_past, v], dim=1)
        final = past_to_ring(k_all[:, T:], v_all[:, T:], n_seen + T)
    return o, final


__all__ = ["chunk_dilated_attention"]

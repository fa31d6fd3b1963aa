"""Chunked sliding-window attention: each block of queries attends only to the key range it
needs (causal: the w keys before the block and the block itself; bidirectional: also the w - 1
keys after it), so memory is O(T * (w + chunk)) rather than O(T^2). Plain autograd: every saved
tensor is one block's ``[chunk, chunk + w - 1]`` (bidirectional ``[chunk, chunk + 2w - 2]``)
score matrix, ALiBi bias included. Derivation in README.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import (
    check_bidirectional,
    check_chunk_size,
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


def chunk_sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    scale: float | None = None,
    initial_state: RingState | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    alibi_slopes: Tensor | None = None,
    causal: bool = True,
) -> tuple[Tensor, RingState | None]:
    """Sliding-window attention in query blocks of ``chunk_size``.

    Shapes, state, ``alibi_slopes [H]`` and ``causal`` as in ``naive_sliding_window_attention``:
    q ``[B, T, H, D]``, k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]``, state ``(k_buf [B, w, Hk, D],
    v_buf [B, w, Hk, Dv], n_seen int64 [])``. Returns ``(o [B, T, H, Dv], final_state)``.
    """
    op = "chunk_sliding_window_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    w = check_positive_int("window", window)
    chunk_size = check_chunk_size(chunk_size)
    check_bidirectional(op, causal, initial_state, output_final_state)
    slopes = check_alibi_slopes(op, alibi_slopes, H, q)
    scale = default_scale(scale, D)
    state = check_ring_state(op, initial_state, B, w, Hk, D, Dv, q)
    if state is None:
        state = empty_ring(B, w, Hk, D, Dv, q)
    n_seen = state[2]
    k_past, v_past, past_valid = ring_to_past(*state)

    # Key index j <-> position n_seen - w + j; query i <-> n_seen + i; distance w + i - j.
    # Causal: i sees j in (i, i + w]; bidirectional: j in (i, i + 2w).
    k_all = torch.cat([k_past, k], dim=1)  # [B, w+T, Hk, D]
    v_all = torch.cat([v_past, v], dim=1)  # [B, w+T, Hk, Dv]
    key_valid = torch.cat([past_valid, past_valid.new_ones(T)])  # [w+T]
    group = H // Hk
    q_g = q.reshape(B, T, Hk, group, D)  # query head h = (kv head, h % G)
    reach = w if causal else 2 * w - 1  # keys after index i that a query i may see

    outs = []
    for i0 in range(0, T, chunk_size):
        i1 = min(i0 + chunk_size, T)
        j0, j1 = i0 + 1, min(i1 - 1 + reach, w + T - 1) + 1  # keys of queries i0..i1-1
        kb, vb = k_all[:, j0:j1], v_all[:, j0:j1]  # [B, Jb, Hk, *]
        s = scale * torch.einsum("bihgd,bjhd->bhgij", q_g[:, i0:i1], kb)  # [B, Hk, G, Ib, Jb]
        i = torch.arange(i0, i1, device=q.device)[:, None]
        j = torch.arange(j0, j1, device=q.device)[None, :]
        dist = (w + i) - j  # [Ib, Jb] query minus key position
        near = (dist >= 0) & (dist < w) if causal else dist.abs() < w
        band = near & key_valid[j0:j1][None, :]  # [Ib, Jb]
        if slopes is not None:  # Press et al. 2022
            s = s + alibi_bias(slopes, dist, s.dtype).reshape(Hk, group, *dist.shape)  # h = (hk, g)
        p = torch.softmax(s.masked_fill(~band, float("-inf")), dim=-1)
        outs.append(torch.einsum("bhgij,bjhd->bihgd", p, vb))  # [B, Ib, Hk, G, Dv]
    o = torch.cat(outs, dim=1).reshape(B, T, H, Dv) if outs else q.new_zeros(B, 0, H, Dv)

    final = None
    if output_final_state:
        final = past_to_ring(k_all[:, T:], v_all[:, T:], n_seen + T)
    return o, final


__all__ = ["chunk_sliding_window_attention"]

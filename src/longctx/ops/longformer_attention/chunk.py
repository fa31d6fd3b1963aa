"""Chunked Longformer attention (Beltagy et al. 2020, §3.1), no ``T x T`` matrix: the window part
is blocked like ``sliding_window_attention/chunk.py`` (a block of queries scores only the key band
it needs), the global columns are a small dense ``[chunk, |G|]`` part concatenated to each block
under the same softmax, and the global rows a dense ``[|G|, keys]`` part that overwrites their
rows. Memory ``O(T * (window + chunk + |G|) + |G| * T)``. Plain autograd. Derivation in README.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.ops.common.checks import check_chunk_size, default_scale
from longctx.ops.longformer_attention.common import (
    LongformerState,
    check_global_positions,
    check_in_sequence,
    check_inputs,
    check_longformer_state,
    empty_state,
    write_positions,
)
from longctx.ops.sliding_window_attention.state import past_to_ring, ring_to_past


def _local_rows(q, k_ext, v_ext, ext_valid, left, lo, hi, g_k, g_v, g_pos, causal, w, n, scale,
                chunk_size):
    """Window + global-column attention of every query. q ``[B, T, H, D]``; ``k_ext [B, E, Hk,
    D]`` with ext row j = position ``n - left + j``; query i sees ext rows ``i + left - lo ..
    i + left + hi`` and the global keys ``g_k [B, nG, Hk, D]`` at ``g_pos`` that lie outside its
    window (inside it they are already in the band). Returns ``[B, T, H, Dv]``."""
    B, T, H, D = q.shape
    Hk = k_ext.shape[2]
    q_g = q.reshape(B, T, Hk, H // Hk, D)  # query head h = (kv head, h % G)
    g_valid = g_pos < n + T  # global keys seen so far (the rest are future tokens)
    outs = []
    for i0 in range(0, T, chunk_size):
        i1 = min(i0 + chunk_size, T)
        j0, j1 = i0 + left - lo, i1 + left + hi  # the key band of queries i0 .. i1 - 1
        qb = q_g[:, i0:i1]
        s_band = scale * torch.einsum("bihgd,bjhd->bhgij", qb, k_ext[:, j0:j1])  # [B,Hk,G,Ib,Jb]
        i = torch.arange(i0, i1, device=q.device)[:, None] + left
        j = torch.arange(j0, j1, device=q.device)[None, :]
        band = (j >= i - lo) & (j <= i + hi) & ext_valid[j0:j1][None, :]  # [Ib, Jb]
        s_glob = scale * torch.einsum("bihgd,bjhd->bhgij", qb, g_k)  # [B, Hk, G, Ib, nG]
        t = n + torch.arange(i0, i1, device=q.device)[:, None]  # absolute query positions
        outside = (g_pos[None, :] <= t - w) if causal else ((g_pos[None, :] - t).abs() >= w)
        cols = torch.cat([band, outside & g_valid[None, :]], dim=1)  # [Ib, Jb + nG]
        s = torch.cat([s_band, s_glob], dim=-1).masked_fill(~cols, float("-inf"))
        p = torch.softmax(s, dim=-1)  # one softmax over window and global columns
        vb = torch.cat([v_ext[:, j0:j1], g_v], dim=1)  # [B, Jb + nG, Hk, Dv]
        outs.append(torch.einsum("bhgij,bjhd->bihgd", p, vb))  # [B, Ib, Hk, G, Dv]
    if not outs:
        return q.new_zeros(B, 0, H, v_ext.shape[-1])
    return torch.cat(outs, dim=1).reshape(B, T, H, -1)


def _global_rows(q_rows, q_pos, k, v, k_pos, causal, scale):
    """Global queries ``q_rows [B, R, H, D]`` at ``q_pos [R]`` over keys ``k [B, S, Hk, D]`` at
    ``k_pos [S]`` (causal: ``k_pos <= q_pos``). Returns ``[B, R, H, Dv]``."""
    B, R, H, D = q_rows.shape
    Hk = k.shape[2]
    qr = q_rows.reshape(B, R, Hk, H // Hk, D)
    s = scale * torch.einsum("bihgd,bjhd->bhgij", qr, k)  # [B, Hk, G, R, S]
    if causal:
        s = s.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhgij,bjhd->bihgd", p, v).reshape(B, R, H, -1)


def chunk_longformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_g: Tensor,
    k_g: Tensor,
    v_g: Tensor,
    window: int,
    global_positions: tuple[int, ...] | Tensor,
    causal: bool = True,
    scale: float | None = None,
    initial_state: LongformerState | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, LongformerState | None]:
    """Longformer attention in query blocks of ``chunk_size``; arguments, state and result as in
    ``naive_longformer_attention``. With a state, ``n_seen`` is read on the host once (which global
    rows fall in this call depends on it)."""
    op = "chunk_longformer_attention"
    B, T, _, Hk, D, Dv, w = check_inputs(op, q, k, v, q_g, k_g, v_g, window, causal,
                                         initial_state, output_final_state)
    G = check_global_positions(op, global_positions)
    chunk_size = check_chunk_size(chunk_size)
    scale = default_scale(scale, D)
    dev = q.device
    G_t = torch.tensor(G, dtype=torch.int64, device=dev)
    if not causal:
        check_in_sequence(op, G, T)
        state = empty_state(B, w, G, Hk, D, Dv, q)
        pad = [0, 0, 0, 0, w - 1, w - 1]  # the band reaches w - 1 rows each side
        k_ext, v_ext = F.pad(k, pad), F.pad(v, pad)  # ext row j = position j - (w - 1)
        ext_valid = torch.zeros(T + 2 * w - 2, dtype=torch.bool, device=dev)
        ext_valid[w - 1:w - 1 + T] = True
        left, lo, hi, n = w - 1, w - 1, w - 1, torch.zeros((), dtype=torch.int64, device=dev)
    else:
        state = check_longformer_state(op, initial_state, B, w, G, Hk, D, Dv, q)
        if state is None:
            state = empty_state(B, w, G, Hk, D, Dv, q)
        n = state[6]
        k_past, v_past, past_valid = ring_to_past(state[0], state[1], n)  # n - w .. n - 1
        k_ext, v_ext = torch.cat([k_past, k], 1), torch.cat([v_past, v], 1)  # [B, w + T, Hk, *]
        ext_valid = torch.cat([past_valid, past_valid.new_ones(T)])
        left, lo, hi = w, w - 1, 0  # query i <-> ext row i + w; it sees rows i + 1 .. i + w

    # the global keys (local projection) at every global position, seen ones only
    g_k, g_v = write_positions(state[2], G_t, k, n), write_positions(state[3], G_t, v, n)
    o = _local_rows(q, k_ext, v_ext, ext_valid, left, lo, hi, g_k, g_v, G_t, causal, w, n,
                    scale, chunk_size)

    n_int = 0 if initial_state is None else int(n)
    rows = [p - n_int for p in G if n_int <= p < n_int + T]  # global queries of this call
    pos_p = torch.arange(state[4].shape[1], device=dev)
    p_k, p_v = write_positions(state[4], pos_p, k_g, n), write_positions(state[5], pos_p, v_g, n)
    if rows:
        idx = torch.tensor(rows, dtype=torch.int64, device=dev)
        if causal:  # K_g, V_g of positions 0 .. max(G): all any global query may see
            o_g = _global_rows(q_g[:, idx], idx + n, p_k, p_v, pos_p, True, scale)
        else:
            o_g = _global_rows(q_g[:, idx], idx, k_g, v_g, None, False, scale)
        o = o.index_copy(1, idx, o_g)  # out of place: the global rows replace the local ones

    final = None
    if output_final_state:
        ring = past_to_ring(k_ext[:, T:], v_ext[:, T:], n + T)
        final = (*ring[:2], g_k, g_v, p_k, p_v, n + T)
    return o, final


__all__ = ["chunk_longformer_attention"]

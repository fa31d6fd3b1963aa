"""The chunk levels of log-linear (Gated) DeltaNet in one pass over the levels (inference forward).

``ops/log_linear/triton.py`` runs level c + m (m = 1..M, chunks of C = 2^c) as one more copy of the
sequence through the delta-rule kernel, with v masked to zero outside the level's sources: M
whole base calls, each redoing the UT transform of every chunk (the same for all levels) and
writing outputs for chunks whose outputs are thrown away. Here the UT transform runs once
(``triton_delta._wy_fwd_kernel``: W = X diag(beta)(e^G ⊙ K), U = X diag(beta) V, GDN §3.3) and
every level walks the chunks with those (Guo et al. 2025, §3.1 for the levels):

    S^(m) = 0 at every 2^m-th chunk (the level's blocks);
    chunk n a source (bit m-1 of n is 0):  S^(m) <- e^{G_last} S^(m) + K̃^T (U - W S^(m))
    chunk n a reader (bit m-1 of n is 1):  o_n += λ^(c+m) ⊙ Q̃ S^(m),
                                           S^(m) <- e^{G_last} S^(m) - K̃^T W S^(m)
with K̃ = K ⊙ e^{G_last - G} and the chunk's effective query Q̃ = (Q ⊙ e^G) - (Q K^T ⊙ Γ)_{i>=j} W
(a reader writes nothing but its tokens still erase: ``chunk._delta_pieces``' Qeff, the same for
every level). One program per (value block, level, sequence x head), the levels in parallel; each
writes its level's outputs (zero for source chunks) to o [M, T, H, V], summed afterwards.
Positions from 0 in each sequence, no state in or out, no gradient: ``log_linear_by_levels``
takes this path for exactly those calls and the copies otherwise.
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl
from torch import Tensor

from longctx.ops.common.triton_delta import _blocks, _pass_stages, _preca, _wy_fwd_kernel
from longctx.ops.common.triton_launch import launch_options
from longctx.ops.common.triton_log_linear import _lam_col
from longctx.ops.common.triton_scalar_decay import (
    _acc,
    _chunk_cumsum_kernel,
    _cols,
    _init_pieces,
    _load_g,
    _pieces_out,
    _prec,
    _sequence,
    chunk_layout,
)


@triton.jit
def _pieces_dot(x, bos, T, i_t, i_h, b_h1, b_h2, b_h3, b_h4, H: tl.constexpr, K: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """X S for a chunk's rows of x [T, H, K] and S held as pieces of BK rows: [BT, BV] (fp32)."""
    b_x = _cols(x, bos, T, i_t, i_h, 0, H, K, BT, BK)
    acc = tl.dot(b_x, b_h1.to(b_x.dtype), input_precision=PREC)
    if K > BK:
        acc += tl.dot(_cols(x, bos, T, i_t, i_h, 1, H, K, BT, BK), b_h2.to(b_x.dtype), input_precision=PREC)
    if K > 2 * BK:
        acc += tl.dot(_cols(x, bos, T, i_t, i_h, 2, H, K, BT, BK), b_h3.to(b_x.dtype), input_precision=PREC)
    if K > 3 * BK:
        acc += tl.dot(_cols(x, bos, T, i_t, i_h, 3, H, K, BT, BK), b_h4.to(b_x.dtype), input_precision=PREC)
    return acc


@triton.jit
def _delta_levels_kernel(
    k, w, u, qt, gc, lam, o, cu_seqlens, chunk_offsets, TT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, C_LOG: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """Level c + m (m = program_id(1) + 1) of one sequence and head, value block i_v: the walk of the
    module docstring; o [M, TT, H, V] gets λ^(c+m) Q̃ S^(m) at reader chunks, 0 at sources."""
    i_v, i_m, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, _ = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    m = i_m + 1
    b_h1, b_h2, b_h3, b_h4 = _init_pieces(k, 0, i_v, False, ACC, K, V, BK, BV)
    o_m = o + i_m.to(tl.int64) * TT * H * V
    for i_t in range(NT):
        if i_t % (1 << m) == 0:  # a new block of the level: its state starts empty
            b_h1, b_h2, b_h3, b_h4 = b_h1 * 0.0, b_h2 * 0.0, b_h3 * 0.0, b_h4 * 0.0
        reader = ((i_t >> (m - 1)) & 1) == 1
        p_o = tl.make_block_ptr(o_m + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_ws = _pieces_dot(w, bos, T, i_t, i_h, b_h1, b_h2, b_h3, b_h4, H, K, BT, BK, PREC)  # W S
        if reader:
            b_o = _pieces_dot(qt, bos, T, i_t, i_h, b_h1, b_h2, b_h3, b_h4, H, K, BT, BK, PREC)
            b_o *= _lam_col(lam, bos, T, i_t, i_h, C_LOG + m, H, L, BT)[:, None]
            tl.store(p_o, b_o.to(p_o.dtype.element_ty), boundary_check=(0, 1))
            b_d = -b_ws
        else:
            tl.store(p_o, tl.zeros([BT, BV], dtype=ACC).to(p_o.dtype.element_ty), boundary_check=(0, 1))
            p_u = tl.make_block_ptr(u + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
            b_d = tl.load(p_u, boundary_check=(0, 1), padding_option="zero").to(ACC) - b_ws
        if HAS_G:
            b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
        else:
            b_g, g_last = tl.zeros([BT], dtype=tl.float32), 0.0
        b_h1, b_h2, b_h3, b_h4 = _pieces_out(b_h1, b_h2, b_h3, b_h4, k, b_d, b_g, g_last, bos, T, i_t, i_h,
                                             H, K, BT, BK, HAS_G, PREC)


def _effective_query(q: Tensor, k: Tensor, w: Tensor, gc: Tensor | None, lens: list[int], BT: int) -> Tensor:
    """Q̃ = (Q ⊙ e^G) - (Q K^T ⊙ Γ)_{i>=j} W per chunk (PyTorch, the accumulation dtype), in the
    kernels' layout [1, TT, H, K]: q, k, w [1, TT, H, K] packed sequences of lengths ``lens``; gc
    [1, TT, H] chunk-local cumulative log-gates or None. Consecutive sequences of one length go as
    one batch (B rows of T tokens: one)."""
    out = torch.empty(q.shape, dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
    causal = torch.ones(BT, BT, dtype=torch.bool, device=q.device).tril()
    start = 0
    for n, group in itertools.groupby(lens):
        S, pad = len(list(group)), -n % BT
        N = (n + pad) // BT

        def chunks(x: Tensor, s: int = start, S: int = S, n: int = n, pad: int = pad, N: int = N) -> Tensor:
            x = x[0, s:s + S * n].to(out.dtype).reshape(S, n, *x.shape[2:])
            x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 3) + (0, 0, 0, pad))
            return x.reshape(S, N, BT, *x.shape[2:]).transpose(2, 3)  # [S, N, H, BT, ...]

        qc, kc, wc = chunks(q), chunks(k), chunks(w)
        scores = qc @ kc.transpose(-1, -2)
        if gc is not None:
            G = chunks(gc[..., None])[..., 0]  # [S, N, H, BT]
            scores = scores * torch.where(causal, G[..., :, None] - G[..., None, :], float("-inf")).exp()
            qc = qc * G[..., None].exp()
        else:
            scores = scores.masked_fill(~causal, 0.0)
        qt = (qc - scores @ wc).transpose(2, 3).reshape(S, N * BT, *q.shape[2:])[:, :n]
        out[0, start:start + S * n] = qt.reshape(S * n, *q.shape[2:])
        start += S * n
    return out


def delta_chunk_levels(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, lam: Tensor,
                       cu: Tensor, lens: list[int], levels: int, BT: int) -> Tensor:
    """Levels c + 1 .. c + ``levels`` (C = BT = 2^c) of log-linear (Gated) DeltaNet, summed:
    [1, TT, H, V] in the accumulation dtype. Packed sequences ``cu`` (int32 [N+1]) of lengths
    ``lens``, positions from 0 in each; q (scaled), k (unit norm) [1, TT, H, K]; v [1, TT, H, V];
    beta, g [1, TT, H] (g None: DeltaNet); lam [1, TT, H, L] (L > c + levels)."""
    _, TT, H, K = q.shape
    V, L = v.shape[-1], lam.shape[-1]
    if L <= BT.bit_length() - 1 + levels:
        raise ValueError(f"delta_chunk_levels: lam has {L} levels, the chunk levels need {BT.bit_length() + levels}")
    offsets, indices, NC = chunk_layout(cu, BT)
    N = cu.numel() - 1
    _, BVs, BK, BV = _blocks(K, V)
    acc, ACC = _acc(q.dtype)
    prec = _prec(q.dtype)
    gc = None
    if g is not None:
        gc = torch.empty(g.shape, dtype=acc, device=g.device)
        _chunk_cumsum_kernel[(NC, H)](g, gc, cu, indices, H=H, BT=BT)
    w, u = torch.empty_like(k), torch.empty_like(v)
    _wy_fwd_kernel[(NC, H)](
        k, v, beta, gc if gc is not None else q, q, w, u, cu, indices,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_G=gc is not None, ACC=ACC, PREC=prec,
        PRECA=_preca(q.dtype), STORE_X=False,
        **launch_options("delta.wy_fwd", num_warps=4, num_stages=1),
    )
    qt = _effective_query(q, k, w, gc, lens, BT).to(q.dtype)
    o = torch.empty(levels, TT, H, V, dtype=q.dtype, device=q.device)
    _delta_levels_kernel[(triton.cdiv(V, BVs), levels, N * H)](
        k, w, u, qt, gc if gc is not None else q, lam, o, cu, offsets, TT,
        H=H, K=K, V=V, L=L, C_LOG=BT.bit_length() - 1, BT=BT, BK=BK, BV=BVs, HAS_G=gc is not None,
        ACC=ACC, PREC=prec,
        **launch_options("log_linear.delta_levels", num_warps=4, num_stages=_pass_stages(q.dtype, K, False)),
    )
    return o.sum(0, dtype=acc).unsqueeze(0)


__all__ = ["delta_chunk_levels"]

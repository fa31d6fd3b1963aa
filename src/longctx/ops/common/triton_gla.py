"""Triton kernels of chunked Gated Linear Attention: a decay per token, head and key dimension.

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,        o_t = scale * q_t^T S_t        (S: [K, V])
(Yang et al. 2024, §4.1; g_t <= 0 in log space, per key dimension). In chunks of C = 64 tokens with
the chunk-local cumulative sums ``G_i = g_0 + ... + g_i`` (per key dimension d, <= 0 and
non-increasing in i), §4.2:
    O_[n]   = scale (Q ⊙ e^G) S_n + A V,      A_ij = scale sum_d q_id k_jd exp(G_id - G_jd) [i >= j]
    S_{n+1} = diag(e^{G_last}) S_n + (K ⊙ e^{G_last - G})^T V
The state pass and the output pass are separate kernels (as in ``triton_scalar_decay``, whose chunk
layout, packed-sequence bounds, chunk-local cumsum and reverse cumsum are reused here): every
``[B, T]`` layout is packed variable lengths, ``[1, B*T]`` with ``cu_seqlens = [0, T, 2T, ...]``.

With no gradient wanted, ``launch_overrides({"gla.fwd_grouped": {"GS": n}})`` runs the grouped
inference forward instead (``triton_scalar_decay``'s, with a decay per key dim): the state at every
GS-th chunk start by a two-level pass (``_fwd_h_group_kernel``, then the scan with the groups' log
decays per key dim) and an output pass (``_fwd_grouped_kernel``) that carries S through each group's
chunks in registers; no per-chunk states are written. Off by default (``GROUPED_BY_DEFAULT``): on
an H100 it was slower than the per-chunk forward at every group size.

Numerical stability (the paper's secondary chunking, §4.3). The fully parallel factorisation
``A = (Q ⊙ e^G)(K ⊙ e^{-G})^T`` needs ``exp(-G)``, i.e. ``exp(+|G|)``: with a gate of -5 per token,
a 64-token chunk reaches e^320 (float32 overflows past e^88; 0 * inf = NaN). Here no exp of a
positive number is ever formed. Each chunk is split into sub-chunks of BC = 16 rows; the scores of
query rows i in sub-chunk a are
  * keys j in earlier sub-chunks (j < r <= i, r = the first row of a): factorised around r,
        exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_j),     both factors <= 1,
    so ``A[a, <r] = (Q_a ⊙ e^{G - G_r}) (K ⊙ e^{G_r - G})^T`` is one tensor-core dot;
  * keys j in sub-chunk a itself: the exact pairwise ``exp(G_i - G_j)`` (masked to -inf above the
    diagonal before the exp), a [BC, BC, BD] element-wise block per slice of BD key dimensions.
The forward computes A by levels of pairs instead (``_fwd_A_levels_kernel``, ``SCORES_BY_LEVELS``):
a pair i > j of a chunk belongs to the level b of the highest bit where i and j differ, and is
factorised around c = the last row of j's 2^b-aligned half (j <= c < i), again two factors <= 1,
with c a function of the row (for the Q factor) and of the column (for the K factor) alone; so
every level is one [BT, BT] tensor-core dot, log2(BT) of them plus the diagonal, with no exact
pairwise block (1.34x GLA's forward at 64k on an H100). The backward keeps the sub-chunks, or with
``DQK_BY_LEVELS`` takes dq, dk and dg by the same levels in one kernel (``_bwd_dqk_levels_kernel``).
A factor that underflows to 0 bounds a term that is genuinely below e^-87 of |q_i||k_j|. Rows past a
sequence's end are given ``G = G_last`` (no decay), so every exponent stays <= 0 there too.

Backward (derived here). With dH_{n+1} the gradient of the state after chunk n and
``dA = scale (dO V^T) [i >= j]`` (the gradient of the unscaled scores):
    dH_n = diag(e^{G_last}) dH_{n+1} + scale (Q ⊙ e^G)^T dO                    (reverse sequential)
    dV   = A^T dO + (K ⊙ e^{G_last - G}) dH_{n+1}
    dQ   = scale (dO S_n^T) ⊙ e^G + [sum_j dA_ij k_jd exp(G_id - G_jd)]_id
    dK   = (V dH_{n+1}^T) ⊙ e^{G_last - G} + [sum_i dA_ij q_id exp(G_id - G_jd)]_jd
with the intra-chunk sums split into sub-chunks exactly as A (dQ: reference r = the first row of
the query's sub-chunk; dK: r' = the last row of the key's sub-chunk, i > r' >= j). The gate's
gradient per token and key dimension d, directly (``_bwd_dg_kernel``):
dg_id = e^{g_id} sum_v S_{i-1}[d, v] dS_i[d, v], in the chunk's terms
    dg_i = sum_{t >= i} q_t ⊙ dq_t^inter + e^{G_last} ⊙ rowsum(S_n ⊙ dH_{n+1})
           + sum_{j < i} k_j ⊙ dk_j^inter + sum_{t >= i > j} q_t ⊙ k_j ⊙ e^{G_t - G_j} dA_tj
(dq^inter, dk^inter: the S_n / dH_{n+1} parts of dQ / dK above); every term carries the decays
between its tokens. The last sum (the pairs straddling i) is split by sub-chunk as A is
(``_gla_straddle``): dots around each sub-chunk's first row across sub-chunks, exact pairwise
decays within one. The identity dGglob_td = q_td dq_td - k_td dk_td, reverse-summed, is the same
in exact arithmetic but its terms cancel down to dg's size: harsh gates gave dg 4.1e-2 relative
error in float16 (the other gradients 4.6e-4); the direct form 3.5e-4.

Hopper pitfall kept from ``triton_scalar_decay``: a transpose is loaded transposed or computed as
its own dot, never ``tl.trans`` of a dot's result (Triton 3.4 - 3.7.0 miscompiles that on Hopper:
flash-linear-attention issue #640).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from longctx.ops.common.triton_launch import launch_options
from longctx.ops.common.triton_scalar_decay import (
    KERNEL_CHUNK,
    _acc,
    _chunk,
    _chunks_per_group,
    _cols,
    _direct_dg,
    _init_pieces,
    _prec,
    _rows_t,
    _scan_groups,
    _sequence,
    _state_dtype,
    _sum_after,
    _sum_before,
    chunk_layout,
    grad_wanted,
    packed_sequences,
)

SUB_CHUNK = 16  # rows of a sub-chunk (§4.3); the smallest tl.dot tile


@triton.jit
def _chunk_cumsum_kernel(g, gc, cu_seqlens, chunk_indices, H: tl.constexpr, K: tl.constexpr,
                         BT: tl.constexpr, BK: tl.constexpr):
    """gc = the cumulative sum of g [T, H, K] within each chunk, in gc's dtype (fp32 or fp64);
    grid (K/BK, chunks, H). (``triton_scalar_decay``'s cumsum would do as g viewed [T, H*K], but
    with one program and one strided column per (chunk, head, key dim).)"""
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    p_g = tl.make_block_ptr(g + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
    p_gc = tl.make_block_ptr(gc + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
    b_g = tl.load(p_g, boundary_check=(0, 1), padding_option="zero").to(gc.dtype.element_ty)
    tl.store(p_gc, tl.cumsum(b_g, axis=0), boundary_check=(0, 1))


@triton.jit
def _gate_last(gc, bos, T, i_t, i_h, i_k, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
               BK: tl.constexpr):
    """G at the chunk's last real token, key dims [i_k BK, i_k BK + BK): [BK] (0 past K)."""
    cols = i_k * BK + tl.arange(0, BK)
    last = tl.minimum(i_t * BT + BT, T) - 1
    return tl.load(gc + ((bos + last) * H + i_h) * K + cols, mask=cols < K, other=0.0)


@triton.jit
def _gate_at(gc, g_last, bos, T, idx, i_h, i_k, H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr):
    """G at the sequence-local rows idx [R] (any order, repeats allowed) as [R, BK]; rows past T
    get g_last."""
    cols = i_k * BK + tl.arange(0, BK)
    m = (idx[:, None] < T) & (cols[None, :] < K)
    b_g = tl.load(gc + ((bos + idx[:, None]) * H + i_h) * K + cols[None, :], mask=m, other=0.0)
    return tl.where(idx[:, None] < T, b_g, g_last[None, :])


@triton.jit
def _gate_at_t(gc, g_last, bos, T, idx, i_h, i_k, H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr):
    """``_gate_at`` loaded transposed: [BK, R]."""
    cols = i_k * BK + tl.arange(0, BK)
    m = (cols[:, None] < K) & (idx[None, :] < T)
    b_g = tl.load(gc + ((bos + idx[None, :]) * H + i_h) * K + cols[:, None], mask=m, other=0.0)
    return tl.where(idx[None, :] < T, b_g, g_last[:, None])


@triton.jit
def _gate_rows(gc, g_last, bos, T, row0, i_h, i_k, H: tl.constexpr, K: tl.constexpr,
               BR: tl.constexpr, BK: tl.constexpr):
    """G of rows [row0, row0 + BR) (sequence-local) as [BR, BK]; rows past T get g_last."""
    return _gate_at(gc, g_last, bos, T, row0 + tl.arange(0, BR), i_h, i_k, H, K, BK)


@triton.jit
def _gate_rows_t(gc, g_last, bos, T, row0, i_h, i_k, H: tl.constexpr, K: tl.constexpr,
                 BR: tl.constexpr, BK: tl.constexpr):
    """``_gate_rows`` loaded transposed: [BK, BR]."""
    return _gate_at_t(gc, g_last, bos, T, row0 + tl.arange(0, BR), i_h, i_k, H, K, BK)


@triton.jit
def _raw_gates(g, bos, T, t0, i_h, i_k, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """From the raw gates g [T, H, K]: G (the chunk-local cumsum) of rows [t0, t0 + BT) as [BT, BK]
    and G_last [BK], in fp32 (fp64 for fp64 g); rows past T get G_last (their g reads as 0)."""
    cols = i_k * BK + tl.arange(0, BK)
    rows = t0 + tl.arange(0, BT)
    b_g = tl.load(g + ((bos + rows[:, None]) * H + i_h) * K + cols[None, :],
                  mask=(rows[:, None] < T) & (cols[None, :] < K), other=0.0)
    if g.dtype.element_ty != tl.float64:
        b_g = b_g.to(tl.float32)
    return tl.cumsum(b_g, axis=0), tl.sum(b_g, axis=0)


@triton.jit
def _raw_gates_t(g, bos, T, t0, i_h, i_k, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """``_raw_gates`` loaded transposed: G^T [BK, BT] and G_last [BK]."""
    cols = i_k * BK + tl.arange(0, BK)
    rows = t0 + tl.arange(0, BT)
    b_g = tl.load(g + ((bos + rows[None, :]) * H + i_h) * K + cols[:, None],
                  mask=(cols[:, None] < K) & (rows[None, :] < T), other=0.0)
    if g.dtype.element_ty != tl.float64:
        b_g = b_g.to(tl.float32)
    return tl.cumsum(b_g, axis=1), tl.sum(b_g, axis=1)


@triton.jit
def _row(x, bos, T, r, i_h, i_k, H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr):
    """Row r (sequence-local) of a [T, H, K] tensor, key dims of block i_k: [BK] (0 outside)."""
    cols = i_k * BK + tl.arange(0, BK)
    return tl.load(x + ((bos + r) * H + i_h) * K + cols, mask=(cols < K) & (r < T), other=0.0)


@triton.jit
def _gla_h_step(b_h, k, v, gc, bos, T, i_t, i_h, i_k, i_v, H: tl.constexpr, K: tl.constexpr,
                V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
                RAW_G: tl.constexpr = False):
    """One [BK, BV] tile (key dims of block i_k) of S through chunk i_t:
    diag(e^{G_last}) S + (K ⊙ e^{G_last - G})^T V; returns it and G_last [BK]. RAW_G: gc holds the
    raw gates (``_raw_gates``), else their chunk-local cumsums."""
    p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (K, T), (1, H * K),
                            (i_k * BK, i_t * BT), (BK, BT), (0, 1))  # K^T
    p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1),
                            (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero")
    b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")
    if RAW_G:
        b_gt, g_last = _raw_gates_t(gc, bos, T, i_t * BT, i_h, i_k, H, K, BT, BK)
    else:
        g_last = _gate_last(gc, bos, T, i_t, i_h, i_k, H, K, BT, BK)
        b_gt = _gate_rows_t(gc, g_last, bos, T, i_t * BT, i_h, i_k, H, K, BT, BK)  # G^T [BK, BT]
    b_kd = (b_k * tl.exp(g_last[:, None] - b_gt)).to(b_k.dtype)  # (K ⊙ e^{G_last - G})^T
    return b_h * tl.exp(g_last)[:, None] + tl.dot(b_kd, b_v, input_precision=PREC), g_last


@triton.jit
def _fwd_h_kernel(
    k, v, gc, h, h0, ht, cu_seqlens, chunk_offsets,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
    RAW_G: tl.constexpr,
):
    """The state S_n at every chunk start (into h [chunks, H, K, V]) and the final state;
    grid (K/BK, V/BV, N*H). RAW_G: gc holds the raw gates."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    b_h = tl.zeros([BK, BV], dtype=ACC)
    if USE_H0:
        p_h0 = tl.make_block_ptr(h0 + i_nh.to(tl.int64) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        b_h += tl.load(p_h0, boundary_check=(0, 1), padding_option="zero").to(b_h.dtype)
    for i_t in range(NT):
        p_h = tl.make_block_ptr(h + ((boh + i_t) * H + i_h) * K * V, (K, V), (V, 1),
                                (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_h, b_h.to(p_h.dtype.element_ty), boundary_check=(0, 1))
        b_h, _ = _gla_h_step(b_h, k, v, gc, bos, T, i_t, i_h, i_k, i_v, H, K, V, BT, BK, BV, PREC, RAW_G)
    if STORE_HT:
        p_ht = tl.make_block_ptr(ht + i_nh.to(tl.int64) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_ht, b_h.to(p_ht.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _fwd_A_kernel(
    q, k, gc, A, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    BD: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """Rows of sub-chunk a of the intra-chunk scores A (scale included, 0 above the diagonal) into
    A [T, H, BT] (row: token, column: position in its chunk); grid (chunks * BT/BC, H)."""
    NS: tl.constexpr = BT // BC
    i_cs, i_h = tl.program_id(0), tl.program_id(1)
    i_c, i_s = i_cs // NS, i_cs % NS
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    r0 = i_t * BT + i_s * BC  # the sub-chunk's first row: the reference point r
    if r0 >= T:
        return
    rows = r0 + tl.arange(0, BC)
    rows_c = i_t * BT + tl.arange(0, BT)
    cols = tl.arange(0, BT)
    sub = tl.arange(0, BC)
    b_A = tl.zeros([BC, BT], dtype=ACC)
    if i_s > 0:  # keys in earlier sub-chunks: factorised around r
        for i_k in range(tl.cdiv(K, BK)):
            g_last = _gate_last(gc, bos, T, i_t, i_h, i_k, H, K, BT, BK)
            b_g = _gate_rows(gc, g_last, bos, T, r0, i_h, i_k, H, K, BC, BK)  # [BC, BK]
            g_r = _row(gc, bos, T, r0, i_h, i_k, H, K, BK)
            p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (r0, i_k * BK), (BC, BK), (1, 0))
            p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (K, T), (1, H * K),
                                    (i_k * BK, i_t * BT), (BK, BT), (0, 1))  # K^T
            b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero")
            b_kt = tl.load(p_k, boundary_check=(0, 1), padding_option="zero")
            b_gt = _gate_rows_t(gc, g_last, bos, T, i_t * BT, i_h, i_k, H, K, BT, BK)
            b_kt = b_kt * tl.exp(tl.where(rows_c[None, :] < r0, g_r[:, None] - b_gt, float("-inf")))
            b_qr = b_q * tl.exp(b_g - g_r[None, :])
            b_A += tl.dot(b_qr.to(b_q.dtype), b_kt.to(b_q.dtype), input_precision=PREC)
    # keys in the same sub-chunk: the exact pairwise decay as one [BC, BC, BD] block per slice of
    # BD key dims (a 3-D product summed over d; a column loop cost one cross-warp sum per key)
    b_Ad = tl.zeros([BC, BC], dtype=ACC)
    ok = (rows[:, None] < T) & (sub[:, None] >= sub[None, :])  # [BC (i), BC (j)]: j <= i, real rows
    for i_d in range(tl.cdiv(K, BD)):
        dcols = i_d * BD + tl.arange(0, BD)
        m_d = (rows[:, None] < T) & (dcols[None, :] < K)
        offs = ((bos + rows[:, None]) * H + i_h) * K + dcols[None, :]
        b_qd = tl.load(q + offs, mask=m_d, other=0.0).to(ACC)
        b_kd = tl.load(k + offs, mask=m_d, other=0.0).to(ACC)
        b_gd = tl.load(gc + offs, mask=m_d, other=0.0)
        e = tl.exp(tl.where(ok[:, :, None], b_gd[:, None, :] - b_gd[None, :, :], float("-inf")))
        b_Ad += tl.sum(b_qd[:, None, :] * b_kd[None, :, :] * e, axis=2)
    # two disjoint stores (one address written by two layouts of a block is unordered)
    p_A = A + ((bos + rows[:, None]) * H + i_h) * BT
    off = (cols[None, :] < i_s * BC) | (cols[None, :] >= i_s * BC + BC)
    tl.store(p_A + cols[None, :], (b_A * scale).to(A.dtype.element_ty), mask=(rows[:, None] < T) & off)
    tl.store(p_A + i_s * BC + sub[None, :], (b_Ad * scale).to(A.dtype.element_ty), mask=rows[:, None] < T)


@triton.jit
def _level_pairs(idx, b):
    """Level b of a chunk's pairs i > j (b = the highest bit where i and j differ), for positions
    idx [BT]: rows that read it (bit b set; columns that feed it have bit b clear), the pairs' mask
    [i, j] (also the same bits above b) and its transpose [j, i], and c (the last row of j's
    2^b-aligned half) as a function of the row (c_row, = idx off the level's rows) and of the column
    (c_col, = idx off its columns)."""
    row_in = (idx & (1 << b)) != 0
    col_in = (idx & (1 << b)) == 0
    same = (idx[:, None] >> (b + 1)) == (idx[None, :] >> (b + 1))
    pair = row_in[:, None] & col_in[None, :] & same
    pair_t = col_in[:, None] & row_in[None, :] & same
    c_row = tl.where(row_in, ((idx >> b) << b) - 1, idx)
    c_col = tl.where(row_in, idx, idx | ((1 << b) - 1))
    return row_in, pair, pair_t, c_row, c_col


@triton.jit
def _fwd_A_levels_kernel(
    q, k, g, gc, A, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, LOG_BT: tl.constexpr, BK: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, RAW_G: tl.constexpr, STORE_GC: tl.constexpr,
):
    """The intra-chunk scores A [T, H, BT] of one chunk, every pair by tensor-core dots; grid
    (chunks, H). The pairs i > j of a chunk split by the highest bit b where i and j differ (i has
    it, j not): around c = the last row of j's 2^b-aligned half, ``e^{G_i - G_j} = e^{G_i - G_c}
    e^{G_c - G_j}``, both factors <= 1, with c = (i >> b << b) - 1 per row and c = j | (2^b - 1) per
    column. So A = diag(q_i . k_i) + sum_b M_b ⊙ (Q ⊙ e^{G - G_c(row)}) (K ⊙ e^{G_c(col) - G})^T,
    log2(BT) dots and 2 log2(BT) exps per entry of Q and K, against BT/BC sub-chunk programs
    each forming BC^2 K pairwise exps in ``_fwd_A_kernel``. RAW_G: G from the raw gates g by the
    chunk-local cumsum in registers (the rows c by ``tl.gather``), into gc if STORE_GC (the
    backward reads it); else G read from gc."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    t0 = i_t * BT
    idx = tl.arange(0, BT)  # position in the chunk
    b_A = tl.zeros([BT, BT], dtype=ACC)
    for i_k in range(tl.cdiv(K, BK)):
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (t0, i_k * BK), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (K, T), (1, H * K), (i_k * BK, t0), (BK, BT), (0, 1))
        b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero")
        b_kt = tl.load(p_k, boundary_check=(0, 1), padding_option="zero")  # K^T [BK, BT]
        if RAW_G:
            b_g, g_last = _raw_gates(g, bos, T, t0, i_h, i_k, H, K, BT, BK)
            b_gt, _ = _raw_gates_t(g, bos, T, t0, i_h, i_k, H, K, BT, BK)
            if STORE_GC:
                p_gc = tl.make_block_ptr(gc + (bos * H + i_h) * K, (T, K), (H * K, 1), (t0, i_k * BK), (BT, BK), (1, 0))
                tl.store(p_gc, b_g.to(p_gc.dtype.element_ty), boundary_check=(0, 1))
        else:
            g_last = _gate_last(gc, bos, T, i_t, i_h, i_k, H, K, BT, BK)
            b_g = _gate_rows(gc, g_last, bos, T, t0, i_h, i_k, H, K, BT, BK)
            b_gt = _gate_rows_t(gc, g_last, bos, T, t0, i_h, i_k, H, K, BT, BK)
        b_A += tl.where(idx[:, None] == idx[None, :], tl.dot(b_q, b_kt, input_precision=PREC), 0.0)
        for b in range(LOG_BT):  # a loop, not unrolled: each level's gathers stay its own
            _rows_in, pair, _pair_t, c_row, c_col = _level_pairs(idx, b)
            if RAW_G:  # G at rows c: gathered from the chunk's G in registers
                g_r = tl.gather(b_g, tl.broadcast_to(c_row[:, None], (BT, BK)), axis=0)  # [BT, BK]
                g_ct = tl.gather(b_gt, tl.broadcast_to(c_col[None, :], (BK, BT)), axis=1)  # [BK, BT]
            else:
                g_r = _gate_at(gc, g_last, bos, T, t0 + c_row, i_h, i_k, H, K, BK)  # [BT, BK]
                g_ct = _gate_at_t(gc, g_last, bos, T, t0 + c_col, i_h, i_k, H, K, BK)  # [BK, BT]
            b_qb = (b_q * tl.exp(b_g - g_r)).to(b_q.dtype)
            b_kb = (b_kt * tl.exp(g_ct - b_gt)).to(b_q.dtype)
            b_A += tl.where(pair, tl.dot(b_qb, b_kb, input_precision=PREC), 0.0)
    p_A = tl.make_block_ptr(A + (bos * H + i_h) * BT, (T, BT), (H * BT, 1), (t0, 0), (BT, BT), (1, 0))
    tl.store(p_A, (b_A * scale).to(A.dtype.element_ty), boundary_check=(0,))


@triton.jit
def _store_o(b_o, A, v, o, bos, T, i_t, i_h, i_v, scale, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
             BV: tl.constexpr, PREC: tl.constexpr):
    """O_[n] = scale b_o + A V for chunk i_t and value block i_v (b_o = (Q ⊙ e^G) S_n), stored into
    o; returns the chunk's V [BT, BV]."""
    p_A = tl.make_block_ptr(A + (bos * H + i_h) * BT, (T, BT), (H * BT, 1), (i_t * BT, 0), (BT, BT), (1, 0))
    p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    b_A = tl.load(p_A, boundary_check=(0,), padding_option="zero")
    b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")
    b_o = b_o * scale + tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)
    p_o = tl.make_block_ptr(o + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), boundary_check=(0, 1))
    return b_v


@triton.jit
def _fwd_o_kernel(
    q, v, gc, h, A, o, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, RAW_G: tl.constexpr,
):
    """O_[n] = scale (Q ⊙ e^G) S_n + A V; grid (V/BV, chunks, H). RAW_G: gc holds the raw gates."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    b_o = tl.zeros([BT, BV], dtype=ACC)
    for i_k in range(tl.cdiv(K, BK)):
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_h = tl.make_block_ptr(h + (i_c * H + i_h).to(tl.int64) * K * V, (K, V), (V, 1),
                                (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero")
        b_h = tl.load(p_h, boundary_check=(0, 1), padding_option="zero")
        if RAW_G:
            b_g, _ = _raw_gates(gc, bos, T, i_t * BT, i_h, i_k, H, K, BT, BK)
        else:
            g_last = _gate_last(gc, bos, T, i_t, i_h, i_k, H, K, BT, BK)
            b_g = _gate_rows(gc, g_last, bos, T, i_t * BT, i_h, i_k, H, K, BT, BK)
        b_qg = (b_q * tl.exp(b_g)).to(b_q.dtype)  # Q ⊙ e^G
        b_o += tl.dot(b_qg, b_h.to(b_q.dtype), input_precision=PREC)
    _store_o(b_o, A, v, o, bos, T, i_t, i_h, i_v, scale, H, V, BT, BV, PREC)


@triton.jit
def _bwd_dh_kernel(
    q, do, gc, dh, dht, dh0, cu_seqlens, chunk_offsets, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
):
    """dH_{n+1} for every chunk n (into dh), reverse over chunks, and dH_0; grid (K/BK, V/BV, N*H)."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    b_dh = tl.zeros([BK, BV], dtype=ACC)
    if USE_DHT:
        p_dht = tl.make_block_ptr(dht + i_nh.to(tl.int64) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        b_dh += tl.load(p_dht, boundary_check=(0, 1), padding_option="zero").to(b_dh.dtype)
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        p_dh = tl.make_block_ptr(dh + ((boh + i_t) * H + i_h) * K * V, (K, V), (V, 1),
                                 (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_dh, b_dh.to(p_dh.dtype.element_ty), boundary_check=(0, 1))
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (K, T), (1, H * K),
                                (i_k * BK, i_t * BT), (BK, BT), (0, 1))  # Q^T
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero")
        b_do = tl.load(p_do, boundary_check=(0, 1), padding_option="zero")
        g_last = _gate_last(gc, bos, T, i_t, i_h, i_k, H, K, BT, BK)
        b_gt = _gate_rows_t(gc, g_last, bos, T, i_t * BT, i_h, i_k, H, K, BT, BK)
        b_qg = (b_q * tl.exp(b_gt) * scale).to(b_do.dtype)  # scale (Q ⊙ e^G)^T
        b_dh = b_dh * tl.exp(g_last)[:, None] + tl.dot(b_qg, b_do, input_precision=PREC)
    if STORE_DH0:
        p_dh0 = tl.make_block_ptr(dh0 + i_nh.to(tl.int64) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_dh0, b_dh.to(p_dh0.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _bwd_dv_dA_kernel(
    k, v, gc, A, do, dh, dv, dA, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """dV = A^T dO + (K ⊙ e^{G_last - G}) dH_{n+1} and dA = scale (dO V^T) [i >= j] (into
    dA [T, H, BT] like A); grid (chunks, H)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    p_At = tl.make_block_ptr(A + (bos * H + i_h) * BT, (BT, T), (1, H * BT), (0, i_t * BT), (BT, BT), (0, 1))
    b_At = tl.load(p_At, boundary_check=(1,), padding_option="zero")  # A^T, loaded transposed
    b_dA = tl.zeros([BT, BT], dtype=ACC)
    for i_v in range(tl.cdiv(V, BV)):
        p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")
        b_do = tl.load(p_do, boundary_check=(0, 1), padding_option="zero")
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_dv = tl.dot(b_At.to(b_do.dtype), b_do, input_precision=PREC)
        for i_k in range(tl.cdiv(K, BK)):
            p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                    (i_t * BT, i_k * BK), (BT, BK), (1, 0))
            p_dh = tl.make_block_ptr(dh + (i_c * H + i_h).to(tl.int64) * K * V, (K, V), (V, 1),
                                     (i_k * BK, i_v * BV), (BK, BV), (1, 0))
            b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero")
            b_dh = tl.load(p_dh, boundary_check=(0, 1), padding_option="zero")
            g_last = _gate_last(gc, bos, T, i_t, i_h, i_k, H, K, BT, BK)
            b_g = _gate_rows(gc, g_last, bos, T, i_t * BT, i_h, i_k, H, K, BT, BK)
            b_kd = (b_k * tl.exp(g_last[None, :] - b_g)).to(b_k.dtype)  # K ⊙ e^{G_last - G}
            b_dv += tl.dot(b_kd, b_dh.to(b_k.dtype), input_precision=PREC)
        p_dv = tl.make_block_ptr(dv + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), boundary_check=(0, 1))
    idx = tl.arange(0, BT)
    b_dA = tl.where(idx[:, None] >= idx[None, :], b_dA * scale, 0.0)
    p_dA = tl.make_block_ptr(dA + (bos * H + i_h) * BT, (T, BT), (H * BT, 1), (i_t * BT, 0), (BT, BT), (1, 0))
    tl.store(p_dA, b_dA.to(p_dA.dtype.element_ty), boundary_check=(0,))


@triton.jit
def _inter_dq_dk(do, v, h, dh, bos, T, row0, i_c, i_h, i_k, H: tl.constexpr, K: tl.constexpr,
                 V: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr,
                 PREC: tl.constexpr, SDS: tl.constexpr):
    """The inter-chunk parts of rows [row0, row0 + BR), key dims of block i_k, before their decays:
    dO S_n^T, V dH_{n+1}^T [BR, BK] (S^T and dH^T loaded transposed, rounded to dO's / V's dtype)
    and, if SDS, rowsum(S_n ⊙ dH_{n+1}) [BK] of those rounded values (else zeros)."""
    b_dq = tl.zeros([BR, BK], dtype=ACC)
    b_dk = tl.zeros([BR, BK], dtype=ACC)
    b_SdS = tl.zeros([BK], dtype=ACC)
    for i_v in range(tl.cdiv(V, BV)):
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1), (row0, i_v * BV), (BR, BV), (1, 0))
        p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1), (row0, i_v * BV), (BR, BV), (1, 0))
        p_ht = tl.make_block_ptr(h + (i_c * H + i_h).to(tl.int64) * K * V, (V, K), (1, V),
                                 (i_v * BV, i_k * BK), (BV, BK), (0, 1))
        p_dht = tl.make_block_ptr(dh + (i_c * H + i_h).to(tl.int64) * K * V, (V, K), (1, V),
                                  (i_v * BV, i_k * BK), (BV, BK), (0, 1))
        b_do = tl.load(p_do, boundary_check=(0, 1), padding_option="zero")
        b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")
        b_ht = tl.load(p_ht, boundary_check=(0, 1), padding_option="zero").to(b_do.dtype)
        b_dht = tl.load(p_dht, boundary_check=(0, 1), padding_option="zero").to(b_v.dtype)
        b_dq += tl.dot(b_do, b_ht, input_precision=PREC)
        b_dk += tl.dot(b_v, b_dht, input_precision=PREC)
        if SDS:
            b_SdS += tl.sum(b_ht.to(ACC) * b_dht.to(ACC), axis=0)
    return b_dq, b_dk, b_SdS


@triton.jit
def _bwd_dqk_kernel(
    q, k, v, gc, h, do, dh, dA, dq, dk, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """dq, dk of the rows of one sub-chunk, key dims of one block; grid (K/BK, chunks * BT/BC, H)."""
    NS: tl.constexpr = BT // BC
    i_k, i_cs, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_c, i_s = i_cs // NS, i_cs % NS
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    r0 = i_t * BT + i_s * BC  # first row of the sub-chunk
    if r0 >= T:
        return
    r1 = tl.minimum(r0 + BC, T) - 1  # its last real row
    rows = r0 + tl.arange(0, BC)
    rows_c = i_t * BT + tl.arange(0, BT)
    sub = tl.arange(0, BC)
    cols = i_k * BK + tl.arange(0, BK)
    g_last = _gate_last(gc, bos, T, i_t, i_h, i_k, H, K, BT, BK)
    b_g = _gate_rows(gc, g_last, bos, T, r0, i_h, i_k, H, K, BC, BK)  # [BC, BK]
    p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (r0, i_k * BK), (BC, BK), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero")

    # inter-chunk: dO S_n^T and V dH_{n+1}^T
    b_dq, b_dk, _ = _inter_dq_dk(do, v, h, dh, bos, T, r0, i_c, i_h, i_k, H, K, V, BC, BK, BV, ACC, PREC, False)
    b_dq *= tl.exp(b_g) * scale
    b_dk *= tl.exp(g_last[None, :] - b_g)

    # intra-chunk, earlier / later sub-chunks: factorised around r0 (dq) and r1 (dk)
    if i_s > 0:
        g_r = _row(gc, bos, T, r0, i_h, i_k, H, K, BK)
        p_kc = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                 (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_kc = tl.load(p_kc, boundary_check=(0, 1), padding_option="zero")
        b_gc = _gate_rows(gc, g_last, bos, T, i_t * BT, i_h, i_k, H, K, BT, BK)
        b_kr = b_kc * tl.exp(tl.where(rows_c[:, None] < r0, g_r[None, :] - b_gc, float("-inf")))
        p_dA = tl.make_block_ptr(dA + (bos * H + i_h) * BT, (T, BT), (H * BT, 1), (r0, 0), (BC, BT), (1, 0))
        b_dA = tl.load(p_dA, boundary_check=(0,), padding_option="zero")  # dA rows of the sub-chunk
        b_dq += tl.dot(b_dA.to(b_q.dtype), b_kr.to(b_q.dtype), input_precision=PREC) * tl.exp(b_g - g_r[None, :])
    if r1 + 1 < tl.minimum(i_t * BT + BT, T):
        g_r1 = _row(gc, bos, T, r1, i_h, i_k, H, K, BK)
        p_qc = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                 (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_qc = tl.load(p_qc, boundary_check=(0, 1), padding_option="zero")
        b_gc = _gate_rows(gc, g_last, bos, T, i_t * BT, i_h, i_k, H, K, BT, BK)
        b_qr = b_qc * tl.exp(tl.where(rows_c[:, None] > r1, b_gc - g_r1[None, :], float("-inf")))
        p_dAt = tl.make_block_ptr(dA + (bos * H + i_h) * BT, (BT, T), (1, H * BT),
                                  (i_s * BC, i_t * BT), (BC, BT), (0, 1))  # dA^T rows of the sub-chunk
        b_dAt = tl.load(p_dAt, boundary_check=(1,), padding_option="zero")
        b_dk += tl.dot(b_dAt.to(b_q.dtype), b_qr.to(b_q.dtype), input_precision=PREC) * tl.exp(g_r1[None, :] - b_g)

    # intra-chunk, the sub-chunk itself: exact pairwise decay, one key column / query row at a time
    p_dA_col = dA + ((bos + rows) * H + i_h) * BT + i_s * BC  # dA[sub-chunk rows, r0 + m] at + m
    p_dA_row = dA + ((bos + r0) * H + i_h) * BT + i_s * BC + sub  # dA[r0 + m, sub-chunk cols] at + m H BT
    p_m = ((bos + r0) * H + i_h) * K + cols  # row r0 + m of q / k / gc at + m H K
    for m in tl.static_range(BC):
        m_ok = r0 + m < T
        m_k = (cols < K) & m_ok
        dA_col = tl.load(p_dA_col + m, mask=rows < T, other=0.0).to(ACC)
        dA_row = tl.load(p_dA_row + m * H * BT, mask=(sub < BC) & m_ok, other=0.0).to(ACC)
        k_m = tl.load(k + p_m + m * H * K, mask=m_k, other=0.0).to(ACC)
        q_m = tl.load(q + p_m + m * H * K, mask=m_k, other=0.0).to(ACC)
        g_m = tl.load(gc + p_m + m * H * K, mask=m_k, other=0.0)
        d_q = tl.exp(tl.where(sub[:, None] >= m, b_g - g_m[None, :], float("-inf")))  # rows i >= m
        d_k = tl.exp(tl.where((sub[:, None] <= m) & m_ok, g_m[None, :] - b_g, float("-inf")))  # rows j <= m
        b_dq += dA_col[:, None] * k_m[None, :] * d_q  # dq_i += dA_im k_m e^{G_i - G_m}
        b_dk += dA_row[:, None] * q_m[None, :] * d_k  # dk_j += dA_mj q_m e^{G_m - G_j}

    m_rows = (rows[:, None] < T) & (cols[None, :] < K)
    offs = ((bos + rows[:, None]) * H + i_h) * K + cols[None, :]
    tl.store(dq + offs, b_dq.to(dq.dtype.element_ty), mask=m_rows)
    tl.store(dk + offs, b_dk.to(dk.dtype.element_ty), mask=m_rows)


@triton.jit
def _half_block_sums(x, y, idx, upper, b, BT: tl.constexpr, BK: tl.constexpr):
    """For each row i of a chunk (rows [BT, BK]): at an upper row of its 2^(b+1)-aligned block
    (bit b set) sum_{t >= i} x_t over the block, at a lower row sum_{j < i} y_j over the block
    (x zero on lower rows, y on upper ones): a whole-chunk suffix / exclusive prefix sum minus its
    value at the block's end / start (gathered)."""
    suf = tl.sum(x, axis=0, keep_dims=True) - tl.cumsum(x, axis=0) + x  # sum_{t >= i} x_t
    pre = tl.cumsum(y, axis=0) - y  # sum_{j < i} y_j
    end = ((idx >> (b + 1)) + 1) << (b + 1)  # the first row after i's block (BT: none)
    start = (idx >> (b + 1)) << (b + 1)
    suf_end = tl.where((end < BT)[:, None],
                       tl.gather(suf, tl.broadcast_to(tl.minimum(end, BT - 1)[:, None], (BT, BK)), axis=0), 0.0)
    pre_start = tl.gather(pre, tl.broadcast_to(start[:, None], (BT, BK)), axis=0)
    return tl.where(upper[:, None], suf - suf_end, pre - pre_start)


@triton.jit
def _bwd_dqk_levels_kernel(
    q, k, v, gc, h, do, dh, dA, dq, dk, dg, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, LOG_BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, STORE_DG: tl.constexpr,
):
    """dq, dk of one chunk's rows, key dims of one block, the intra-chunk sums by levels of pairs
    as the forward's scores (``_fwd_A_levels_kernel``); grid (K/BK, chunks, H). With c the last
    row of j's 2^b-aligned half (c = c_row(i) = c_col(j)) for a pair i > j at level b:
        dq_i += e^{G_i - G_c(i)} ⊙ sum_j [pair] dA_ij (k_j ⊙ e^{G_c(j) - G_j})
        dk_j += e^{G_c(j) - G_j} ⊙ sum_i [pair] dA_ij (q_i ⊙ e^{G_i - G_c(i)})
    (every factor <= 1), one [BT, BT] x [BT, BK] dot each per level (dA^T loaded transposed), and
    the diagonal dq_i += dA_ii k_i, dk_i += dA_ii q_i; the inter-chunk parts as ``_bwd_dqk_kernel``.
    STORE_DG: the gate's gradient too, in ``_bwd_dg_kernel``'s terms, its straddling pairs by
    level: a pair t > j of level b straddles i (j < i <= t) iff i is in t's half of their 2^(b+1)
    block at or before t, or in j's half after j, so
        sum_{t >= i > j} P_tj = sum_b [i upper] sum_{t >= i, upper} (q ⊙ dq_b)_t
                                    + [i lower] sum_{j < i, lower} (k ⊙ dk_b)_j
    with dq_b, dk_b the level's intra-chunk terms above (zero off the upper / lower rows): each a
    difference of two values of one whole-chunk cumsum (``_half_block_sums``)."""
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    t0 = i_t * BT
    idx = tl.arange(0, BT)
    g_last = _gate_last(gc, bos, T, i_t, i_h, i_k, H, K, BT, BK)
    b_g = _gate_rows(gc, g_last, bos, T, t0, i_h, i_k, H, K, BT, BK)  # [BT, BK]
    p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (t0, i_k * BK), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (t0, i_k * BK), (BT, BK), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero")
    b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero")

    # inter-chunk: dO S_n^T and V dH_{n+1}^T, and rowsum(S_n ⊙ dH_{n+1}) for dg
    b_dq, b_dk, b_SdS = _inter_dq_dk(do, v, h, dh, bos, T, t0, i_c, i_h, i_k, H, K, V, BT, BK, BV, ACC, PREC,
                                     STORE_DG)
    b_dq *= tl.exp(b_g) * scale
    b_dk *= tl.exp(g_last[None, :] - b_g)
    if STORE_DG:  # dg's terms through S_n and dH_{n+1}: q ⊙ dq^inter, k ⊙ dk^inter
        b_a = b_q.to(ACC) * b_dq
        b_e = b_k.to(ACC) * b_dk
        b_straddle = tl.zeros([BT, BK], dtype=ACC)

    # intra-chunk: dA [i, j] and dA^T [j, i] of the chunk (zero past T)
    p_dA = tl.make_block_ptr(dA + (bos * H + i_h) * BT, (T, BT), (H * BT, 1), (t0, 0), (BT, BT), (1, 0))
    p_dAt = tl.make_block_ptr(dA + (bos * H + i_h) * BT, (BT, T), (1, H * BT), (0, t0), (BT, BT), (0, 1))
    b_dA = tl.load(p_dA, boundary_check=(0,), padding_option="zero")
    diag = tl.sum(tl.where(idx[:, None] == idx[None, :], b_dA, 0.0), axis=1)  # dA_ii
    b_dq += diag[:, None] * b_k.to(ACC)
    b_dk += diag[:, None] * b_q.to(ACC)
    b_dA = b_dA.to(b_q.dtype)  # rounded once (each level's product reads it so): fewer registers
    b_dAt = tl.load(p_dAt, boundary_check=(1,), padding_option="zero").to(b_q.dtype)
    for b in range(LOG_BT):  # a loop, not unrolled, as the forward's
        row_in, pair, pair_t, c_row, c_col = _level_pairs(idx, b)
        g_r = _gate_at(gc, g_last, bos, T, t0 + c_row, i_h, i_k, H, K, BK)  # G at c(i) [BT, BK]
        g_c = _gate_at(gc, g_last, bos, T, t0 + c_col, i_h, i_k, H, K, BK)  # G at c(j) [BT, BK]
        e_r = tl.exp(b_g - g_r)  # e^{G_i - G_c(i)} (1 off the level's rows)
        e_c = tl.exp(g_c - b_g)  # e^{G_c(j) - G_j} (1 off its columns)
        b_kb = (b_k * e_c).to(b_q.dtype)
        b_qb = (b_q * e_r).to(b_q.dtype)
        b_dqb = e_r * tl.dot(tl.where(pair, b_dA, 0.0), b_kb, input_precision=PREC)
        b_dkb = e_c * tl.dot(tl.where(pair_t, b_dAt, 0.0), b_qb, input_precision=PREC)
        b_dq += b_dqb
        b_dk += b_dkb
        if STORE_DG:  # the level's pairs straddling each row: sums over the row's half-block
            b_straddle += _half_block_sums(b_q.to(ACC) * b_dqb, b_k.to(ACC) * b_dkb, idx, row_in, b, BT, BK)
    if STORE_DG:
        b_dg = _direct_dg(b_a, b_e, b_straddle, (tl.exp(g_last) * b_SdS)[None, :])
        p_dg = tl.make_block_ptr(dg + (bos * H + i_h) * K, (T, K), (H * K, 1), (t0, i_k * BK), (BT, BK), (1, 0))
        tl.store(p_dg, b_dg.to(p_dg.dtype.element_ty), boundary_check=(0, 1))
    p_dq = tl.make_block_ptr(dq + (bos * H + i_h) * K, (T, K), (H * K, 1), (t0, i_k * BK), (BT, BK), (1, 0))
    p_dk = tl.make_block_ptr(dk + (bos * H + i_h) * K, (T, K), (H * K, 1), (t0, i_k * BK), (BT, BK), (1, 0))
    tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), boundary_check=(0, 1))
    tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _gla_straddle(q, k, gc, dA, b_q, b_k, b_g, g_last, bos, T, i_t, i_h, i_k,
                  H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                  BK: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """sum_{t >= i > j} P_tj for every row i of a chunk, P_tj = q_t ⊙ k_j ⊙ e^{G_t - G_j} dA_tj (the
    intra-chunk pairs that straddle i): [BT, BK]. ``b_q``, ``b_k``: the chunk's rows in ACC,
    ``b_g``: their G (rows past T: g_last). Split by sub-chunk as A is (§4.3):
      * t in sub-chunk b, j before it (r = b's first row): around r, both factors <= 1,
            Q^b_t = q_t e^{G_t - G_r} [t in b],   K^b_j = k_j e^{G_r - G_j} [j < r];
        for i <= r the straddling pairs are all of b's t and j < i: prefix sums of K^b ⊙ (dA^T Q^b);
        for i in b past r: t >= i and every j < r: suffix sums of Q^b ⊙ (dA K^b) — two dots per b;
      * t, j in one sub-chunk: exact pairwise decays, one key offset s at a time ([NS, BC, BK]
        element-wise: row t pairs with j = its sub-chunk's row s)."""
    NS: tl.constexpr = BT // BC
    DT = q.dtype.element_ty
    idx = tl.arange(0, BT)
    cols = i_k * BK + tl.arange(0, BK)
    # same sub-chunk: row t = a BC + m pairs with j = a BC + s (s < m); after step s, Acc holds
    # sum_{s' <= s} P_{t, a BC + s'}, and the rows i = a BC + s + 1 take sum_{t >= i in a} Acc_t
    a3 = tl.arange(0, NS)[:, None, None]
    m3 = tl.arange(0, BC)[None, :, None]
    t3 = i_t * BT + a3 * BC + m3  # [NS, BC, 1] sequence-local rows
    b_q3 = tl.reshape(b_q, (NS, BC, BK))
    b_g3 = tl.reshape(b_g, (NS, BC, BK))
    a2 = tl.arange(0, NS)[:, None]
    j2 = i_t * BT + a2 * BC  # [NS, 1]: first row of each sub-chunk
    p_dA3 = dA + ((bos + t3) * H + i_h) * BT + a3 * BC  # dA[t, a BC + s] at + s
    b_acc = tl.zeros([NS, BC, BK], dtype=ACC)
    b_S3 = tl.zeros([NS, BC, BK], dtype=ACC)
    for s in tl.static_range(BC - 1):
        ok_j = (j2 + s < T) & (cols[None, :] < K)
        offs_j = ((bos + j2 + s) * H + i_h) * K + cols[None, :]
        k_s = tl.load(k + offs_j, mask=ok_j, other=0.0).to(ACC)[:, None, :]  # [NS, 1, BK]
        g_s = tl.load(gc + offs_j, mask=ok_j, other=0.0)[:, None, :]
        dA_s = tl.load(p_dA3 + s, mask=t3 < T, other=0.0).to(ACC)  # [NS, BC, 1]
        live = (m3 > s) & (t3 < T)
        b_acc += tl.where(live, b_q3 * k_s * tl.exp(tl.where(live, b_g3 - g_s, 0.0)) * dA_s, 0.0)
        seg = tl.sum(tl.where(m3 > s, b_acc, 0.0), axis=1)  # [NS, BK]: sum_{t > a BC + s in a}
        b_S3 += tl.where(m3 == s + 1, seg[:, None, :], 0.0)
    b_S = tl.reshape(b_S3, (BT, BK))  # the 3-D tiles are dead from here on
    p_dA = tl.make_block_ptr(dA + (bos * H + i_h) * BT, (T, BT), (H * BT, 1), (i_t * BT, 0), (BT, BT), (1, 0))
    p_dAt = tl.make_block_ptr(dA + (bos * H + i_h) * BT, (BT, T), (1, H * BT), (0, i_t * BT), (BT, BT), (0, 1))
    for b in tl.static_range(1, NS):
        r = i_t * BT + b * BC
        if r < T:  # dA reloaded per b (from L2): two [BT, BT] tiles live through the loop spilled
            b_dA = tl.load(p_dA, boundary_check=(0,), padding_option="zero").to(DT)
            b_dAt = tl.load(p_dAt, boundary_check=(1,), padding_option="zero").to(DT)  # transposed
            g_r = _row(gc, bos, T, r, i_h, i_k, H, K, BK)
            in_b = (idx >= b * BC) & (idx < b * BC + BC)
            before = idx < b * BC
            b_Qb = tl.where(in_b[:, None], b_q * tl.exp(tl.where(in_b[:, None], b_g - g_r[None, :], 0.0)), 0.0)
            b_Kb = tl.where(before[:, None], b_k * tl.exp(tl.where(before[:, None], g_r[None, :] - b_g, 0.0)), 0.0)
            b_U = tl.dot(b_dAt, b_Qb.to(DT), input_precision=PREC)  # [j]: sum_{t in b} dA_tj Q^b_t
            b_Z = tl.dot(b_dA, b_Kb.to(DT), input_precision=PREC)  # [t]: sum_{j < r} dA_tj K^b_j
            b_Y = b_Qb * b_Z
            b_S += tl.where((idx <= b * BC)[:, None], _sum_before(b_Kb * b_U), _sum_after(b_Y) + b_Y)
    return b_S


@triton.jit
def _bwd_dg_kernel(
    q, k, v, gc, h, do, dh, dA, dg, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """The gate's gradient of one chunk, key dims of one block, per token and directly
    (dg_ic = e^{g_ic} sum_v S_{i-1}[c, v] dS_i[c, v], in the chunk's terms):
        dg_i = sum_{t >= i} q_t ⊙ dq_t^inter + e^{G_last} ⊙ rowsum(S_n ⊙ dH_{n+1})
               + sum_{j < i} k_j ⊙ dk_j^inter + sum_{t >= i > j} q_t ⊙ k_j ⊙ e^{G_t - G_j} dA_tj
    (dq^inter = scale e^G ⊙ dO S_n^T, dk^inter = e^{G_last - G} ⊙ V dH_{n+1}^T); every term carries
    the decays between its tokens, so nothing cancels. Grid (K/BK, chunks, H)."""
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    idx = tl.arange(0, BT)
    cols = i_k * BK + tl.arange(0, BK)
    g_last = _gate_last(gc, bos, T, i_t, i_h, i_k, H, K, BT, BK)
    b_g = _gate_rows(gc, g_last, bos, T, i_t * BT, i_h, i_k, H, K, BT, BK)  # [BT, BK]
    p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1), padding_option="zero").to(ACC)
    b_k = tl.load(p_k, boundary_check=(0, 1), padding_option="zero").to(ACC)
    # dO S_n^T, V dH_{n+1}^T (rounded as bwd_dqk's) and rowsum(S_n ⊙ dH_{n+1})
    b_dqi, b_dki, b_SdS = _inter_dq_dk(do, v, h, dh, bos, T, i_t * BT, i_c, i_h, i_k, H, K, V, BT, BK, BV, ACC,
                                       PREC, True)
    b_a = b_q * b_dqi * tl.exp(b_g) * scale
    b_e = b_k * b_dki * tl.exp(g_last[None, :] - b_g)
    b_straddle = _gla_straddle(q, k, gc, dA, b_q, b_k, b_g, g_last, bos, T, i_t, i_h, i_k,
                               H, K, BT, BC, BK, ACC, PREC)
    b_dg = _direct_dg(b_a, b_e, b_straddle, (tl.exp(g_last) * b_SdS)[None, :])
    rows = i_t * BT + idx
    m_rows = (rows[:, None] < T) & (cols[None, :] < K)
    tl.store(dg + ((bos + rows[:, None]) * H + i_h) * K + cols[None, :], b_dg, mask=m_rows)


# ---------------------------------------------------------------------------------------------
# host side


@triton.jit
def _fwd_h_group_kernel(
    k, v, gc, hl, gtot, cu_seqlens, group_indices, GS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """The grouped inference forward's first level (``triton_scalar_decay._fwd_h_group_kernel``
    with a decay per key dim): each group's own contribution to the state, its GS chunks from a
    zero state (into hl), and its total log decay per key dim (into gtot [groups, H, K], by the
    programs of value tile 0); grid (K/BK, V/BV, groups * H)."""
    i_k, i_v, i_gh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_g, i_h = i_gh // H, i_gh % H
    i_s, bos, T = _chunk(cu_seqlens, group_indices, i_g)
    b_h = tl.zeros([BK, BV], dtype=ACC)
    b_gt = tl.zeros([BK], dtype=ACC)
    for i_t in range(i_s * GS, tl.minimum(i_s * GS + GS, tl.cdiv(T, BT))):
        b_h, g_last = _gla_h_step(b_h, k, v, gc, bos, T, i_t, i_h, i_k, i_v, H, K, V, BT, BK, BV, PREC)
        b_gt += g_last
    p_l = tl.make_block_ptr(hl + i_gh.to(tl.int64) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
    tl.store(p_l, b_h.to(p_l.dtype.element_ty), boundary_check=(0, 1))
    cols = i_k * BK + tl.arange(0, BK)
    tl.store(gtot + i_gh * K + cols, b_gt, mask=(cols < K) & (i_v == 0))


@triton.jit
def _piece_o(b_h, q, gc, bos, T, i_t, i_h, p, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
             BP: tl.constexpr, PREC: tl.constexpr):
    """(Q ⊙ e^G) S over key dims [p BP, p BP + BP) (one piece of S): [BT, BV]."""
    b_q = _cols(q, bos, T, i_t, i_h, p, H, K, BT, BP)
    g_last = _gate_last(gc, bos, T, i_t, i_h, p, H, K, BT, BP)
    b_qg = (b_q * tl.exp(_gate_rows(gc, g_last, bos, T, i_t * BT, i_h, p, H, K, BT, BP))).to(b_q.dtype)
    return tl.dot(b_qg, b_h.to(b_q.dtype), input_precision=PREC)


@triton.jit
def _piece_out(b_h, k, gc, b_v, bos, T, i_t, i_h, p, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
               BP: tl.constexpr, PREC: tl.constexpr):
    """One piece of S after chunk i_t: diag(e^{G_last}) S + (K ⊙ e^{G_last - G})^T V."""
    b_kt = _rows_t(k, bos, T, i_t, i_h, p, H, K, BT, BP)
    g_last = _gate_last(gc, bos, T, i_t, i_h, p, H, K, BT, BP)
    b_kd = (b_kt * tl.exp(g_last[:, None] - _gate_rows_t(gc, g_last, bos, T, i_t * BT, i_h, p, H, K, BT, BP)))
    return b_h * tl.exp(g_last)[:, None] + tl.dot(b_kd.to(b_kt.dtype), b_v, input_precision=PREC)


@triton.jit
def _fwd_grouped_kernel(
    q, k, v, gc, h, A, o, cu_seqlens, group_indices, scale, GS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """O of the GS chunks of one group from the state at the group's start (h: one per group,
    fp32), S carried from chunk to chunk in registers (``triton_scalar_decay._fwd_grouped_kernel``
    with a decay per key dim and the intra-chunk scores A from ``_fwd_A_kernel``):
        O_[n] = scale (Q ⊙ e^G) S_n + A V,      S_{n+1} = diag(e^{G_last}) S_n + (K ⊙ e^{G_last - G})^T V
    grid (V/BV, groups, H). S is held as up to four pieces of BP <= 64 rows (K <= 4 BP)."""
    tl.static_assert(BP <= 64 and K <= 4 * BP, "S is held as up to four pieces of at most 64 rows")
    i_v, i_g, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_s, bos, T = _chunk(cu_seqlens, group_indices, i_g)
    b_h1, b_h2, b_h3, b_h4 = _init_pieces(h, i_g * H + i_h, i_v, True, ACC, K, V, BP, BV)
    for i_t in range(i_s * GS, tl.minimum(i_s * GS + GS, tl.cdiv(T, BT))):
        b_o = _piece_o(b_h1, q, gc, bos, T, i_t, i_h, 0, H, K, BT, BP, PREC)
        if K > BP:
            b_o += _piece_o(b_h2, q, gc, bos, T, i_t, i_h, 1, H, K, BT, BP, PREC)
        if K > 2 * BP:
            b_o += _piece_o(b_h3, q, gc, bos, T, i_t, i_h, 2, H, K, BT, BP, PREC)
        if K > 3 * BP:
            b_o += _piece_o(b_h4, q, gc, bos, T, i_t, i_h, 3, H, K, BT, BP, PREC)
        b_v = _store_o(b_o, A, v, o, bos, T, i_t, i_h, i_v, scale, H, V, BT, BV, PREC)
        b_h1 = _piece_out(b_h1, k, gc, b_v, bos, T, i_t, i_h, 0, H, K, BT, BP, PREC)
        if K > BP:
            b_h2 = _piece_out(b_h2, k, gc, b_v, bos, T, i_t, i_h, 1, H, K, BT, BP, PREC)
        if K > 2 * BP:
            b_h3 = _piece_out(b_h3, k, gc, b_v, bos, T, i_t, i_h, 2, H, K, BT, BP, PREC)
        if K > 3 * BP:
            b_h4 = _piece_out(b_h4, k, gc, b_v, bos, T, i_t, i_h, 3, H, K, BT, BP, PREC)


# The intra-chunk scores by ``_fwd_A_levels_kernel`` (every pair in tensor-core dots, one program per
# chunk) instead of ``_fwd_A_kernel`` (sub-chunk programs, exact pairwise exps on the diagonal
# blocks): equal to float64 rounding in the interpreter. On an H100 (session 19; B=1 H=16 K=V=128
# bf16) GLA's forward went from 5.64 to 4.22 ms at 64k and 1.46 to 1.07 at 16k (the sub-chunk kernel
# was 834 of 1435 us at 16k, fla's two score kernels 395), forward + backward 31.0 -> 29.3; its GPU
# tests passed (27 of them, float32 at every size and bf16 at K = 64 and 128, before the call's time
# ran out): on.
SCORES_BY_LEVELS = True

# The backward's dq, dk and dg in one kernel with the intra-chunk sums by levels of pairs
# (``_bwd_dqk_levels_kernel``, one program per chunk: log2(BT) [BT, BT] dots each, and dg's
# straddling pairs per level as differences of one cumsum, ``_half_block_sums``) instead of sub-chunk programs whose own sub-chunk is
# summed one key column / query row at a time with exact pairwise exps (16 steps of [BC, BK]
# element-wise work each) and a separate dg kernel (``_bwd_dg_kernel``, the same sub-chunk split):
# as the forward's scores, where that change took the kernel from 834 to about 450 us at 16k on an
# H100. On an H100 (2026-12-07, session 21; flag_ab.py, B = 1, H = 16, K = V = 128, bf16) GLA's
# forward + backward went from 29.59 to 21.08 ms at 64k (outputs and gradients within 4.9e-3 of the
# sub-chunk kernels', relative to each one's largest entry), and its GPU tests passed
# (tests/ops/test_triton_gla.py -k dqk_by_levels): on.
DQK_BY_LEVELS = True

# No chunk-cumsum kernel: the scores by levels, the state pass and the output pass each form the
# chunk-local G from the raw gates in registers (the levels' rows c by ``tl.gather``), and G is
# written only when a gradient is wanted (the scores kernel stores it for the backward). Saves
# the cumsum kernel's read of g and write of G plus the scores' read of G (fp32 [T, H, K] each): on
# an H100 that kernel was 89 of GLA's 1435 us forward at 16k (session 19). Exact in the
# interpreter, and its GPU tests passed (session 21), but on the H100 it made GLA's forward slower,
# 4.24 -> 7.49 ms at 64k (forward + backward 29.7 -> 33.0; flag_ab.py): forming G in each kernel
# (its cumsum and tl.gather of the levels' rows) costs more than the one kernel it saves. Off.
# Needs SCORES_BY_LEVELS.
CUMSUM_IN_KERNELS = False


def _raw_gates_in_kernels() -> bool:
    return CUMSUM_IN_KERNELS and SCORES_BY_LEVELS


def _blocks(K: int, V: int) -> tuple[int, int]:
    """(BK, BV): key / value blocks of at most 64 (at least 16, the smallest tl.dot tile)."""
    return min(64, max(16, triton.next_power_of_2(K))), min(64, max(16, triton.next_power_of_2(V)))


def _cumsum_and_scores(q: Tensor, k: Tensor, g: Tensor, scale: float, cu: Tensor, indices: Tensor, NC: int,
                       BT: int, BC: int, store_gc: bool = True) -> tuple[Tensor | None, Tensor]:
    """The chunk-local gate cumsums G [1, T, H, K] (fp32; fp64 for fp64) and the intra-chunk scores
    A [T, H, BT] (in the input dtype for half inputs, read rounded). With ``_raw_gates_in_kernels()``
    the scores kernel forms G itself, and stores it only if store_gc (else G is None: the state and
    output passes form it from g too)."""
    _, _, H, K = q.shape
    BK = _blocks(K, 1)[0]
    ACC = _acc(q.dtype)[1]
    raw = _raw_gates_in_kernels()
    gc = torch.empty(g.shape, dtype=_acc(g.dtype)[0], device=g.device) if store_gc or not raw else None
    if not raw:
        _chunk_cumsum_kernel[(triton.cdiv(K, BK), NC, H)](g, gc, cu, indices, H=H, K=K, BT=BT, BK=BK)
    A = q.new_empty(q.shape[1], H, BT, dtype=_state_dtype(q.dtype))
    if SCORES_BY_LEVELS:
        _fwd_A_levels_kernel[(NC, H)](
            q, k, g, gc if gc is not None else g, A, cu, indices, scale, H=H, K=K, BT=BT,
            LOG_BT=BT.bit_length() - 1, ACC=ACC, PREC=_prec(q.dtype), RAW_G=raw, STORE_GC=gc is not None,
            **launch_options("gla.fwd_A_levels", num_warps=8, num_stages=1, BK=min(BK, 32)),
        )
        return gc, A
    _fwd_A_kernel[(NC * (BT // BC), H)](
        q, k, gc, A, cu, indices, scale, H=H, K=K, BT=BT, BC=BC, BK=BK, BD=min(BK, 16), ACC=ACC,
        PREC=_prec(q.dtype),  # 4 warps for the [BC, BC, BD] diagonal block (ptxas: 111 registers, no
        # spills); not yet timed on a GPU (the column-loop kernel before it: 8 warps, 2 stages)
        **launch_options("gla.fwd_A", num_warps=4, num_stages=2),
    )
    return gc, A


# The grouped inference forward (no gradient wanted: no per-chunk states; ``triton_scalar_decay``'s
# with a decay per key dim) passes its GPU tests but does not pay here, so it is off by default:
# on an H100 at T = 64k (B=1 H=16 K=V=128 bf16, 2026-12-07, tune_kernels.py) the forward took
# 5.68 ms per chunk (GS 1) and 7.30 / 6.64 / 6.36 / 6.28 ms at GS 2 / 4 / 8 / 16. Unlike the
# scalar decay's, its output pass carries S with a decay per key dim through each group's chunks,
# which costs more than the per-chunk states it saves writing.
# ``launch_overrides({"gla.fwd_grouped": {"GS": n}})`` runs it (the tests, tune_kernels.py).
GROUPED_BY_DEFAULT = False


def _inference(q, k, v, g, h0, scale, want_ht, cu, BT, BC):
    """``gla_chunk``'s forward when no gradient is wanted: the grouped forward where GS > 1 (the
    state at every GS-th chunk start by a two-level pass, then an output pass carrying S through
    each group's chunks), else the training forward's kernels."""
    _, _, H, K = q.shape
    V = v.shape[-1]
    N = cu.numel() - 1
    _, indices, NC = chunk_layout(cu, BT)
    BK, BV = _blocks(K, V)
    opts = launch_options("gla.fwd_grouped", num_warps=4, num_stages=2, BV=BV)
    BVo = opts.pop("BV")
    GS = opts.pop("GS", None) or (_chunks_per_group(NC, H, V, BVo, q.device) if GROUPED_BY_DEFAULT else 1)
    if GS <= 1 or K > 256:  # the output pass holds S as at most four pieces of 64 rows
        return _GlaFn.apply(q, k, v, g, h0, scale, want_ht, cu, BT, BC, False)
    acc, ACC = _acc(q.dtype)
    prec = _prec(q.dtype)
    gc, A = _cumsum_and_scores(q, k, g, scale, cu, indices, NC, BT, BC)
    goffsets, gindices, NG = chunk_layout(cu, BT * GS)
    h = q.new_empty(NG, H, K, V, dtype=acc)  # the state at each group start
    hl = torch.empty_like(h)  # each group's own part
    gtot = torch.empty(NG, H, K, dtype=acc, device=q.device)  # each group's log decay per key dim
    ht = q.new_empty(N, H, K, V, dtype=acc) if want_ht else None
    st = launch_options("gla.fwd_h", num_warps=4, num_stages=3, BK=min(BK, 32), BV=min(BV, 32))
    grid = (triton.cdiv(K, st["BK"]), triton.cdiv(V, st["BV"]))
    _fwd_h_group_kernel[(*grid, NG * H)](k, v, gc, hl, gtot, cu, gindices, GS, H=H, K=K, V=V, BT=BT,
                                         ACC=ACC, PREC=prec, **st)
    _scan_groups(hl, gtot, h, h0, ht, goffsets, st, True, "gla.fwd_h_scan", per_key=True)
    o = torch.empty_like(v)
    _fwd_grouped_kernel[(triton.cdiv(V, BVo), NG, H)](
        q, k, v, gc, h, A, o, cu, gindices, scale, GS, H=H, K=K, V=V, BT=BT,
        BP=min(64, max(16, triton.next_power_of_2(K))), BV=BVo, ACC=ACC, PREC=prec, **opts,
    )
    return o, ht


class _GlaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, want_ht, cu, BT, BC, train):
        _, _, H, K = q.shape
        V = v.shape[-1]
        N = cu.numel() - 1
        offsets, indices, NC = chunk_layout(cu, BT)
        BK, BV = _blocks(K, V)
        acc, ACC = _acc(q.dtype)
        prec = _prec(q.dtype)
        gc, A = _cumsum_and_scores(q, k, g, scale, cu, indices, NC, BT, BC, store_gc=train)
        raw = _raw_gates_in_kernels()
        gk = g if raw else gc  # the gates the state and output passes read
        h = q.new_empty(NC, H, K, V, dtype=_state_dtype(q.dtype))  # rounded as its readers round it
        ht = q.new_empty(N, H, K, V, dtype=acc) if want_ht else None
        # 32 x 32 state tiles (4x the programs): forward 0.487 -> 0.436 ms at 4k, H100 (tune_kernels.py)
        opts = launch_options("gla.fwd_h", num_warps=4, num_stages=3, BK=min(BK, 32), BV=min(BV, 32))
        _fwd_h_kernel[(triton.cdiv(K, opts["BK"]), triton.cdiv(V, opts["BV"]), N * H)](
            k, v, gk, h, h0 if h0 is not None else q, ht if want_ht else q, cu, offsets,
            H=H, K=K, V=V, BT=BT, ACC=ACC, PREC=prec, USE_H0=h0 is not None, STORE_HT=want_ht, RAW_G=raw, **opts,
        )
        o = torch.empty_like(v)
        # BV: a tunable (up to all of V: each program then reads its chunk's Q and fp32 gates once)
        opts = launch_options("gla.fwd_o", num_warps=4, num_stages=3, BV=BV)
        BVo = opts.pop("BV")
        _fwd_o_kernel[(triton.cdiv(V, BVo), NC, H)](
            q, v, gk, h, A, o, cu, indices, scale, H=H, K=K, V=V, BT=BT, BK=BK, BV=BVo, ACC=ACC, PREC=prec,
            RAW_G=raw, **opts,
        )
        ctx.save_for_backward(q, k, v, gc, h0, h, A, cu, offsets, indices)
        ctx.meta = (scale, BT, BC, NC, g.requires_grad, g.dtype)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, h0, h, A, cu, offsets, indices = ctx.saved_tensors
        scale, BT, BC, NC, g_grad, g_dtype = ctx.meta
        _, T, H, K = q.shape
        V = v.shape[-1]
        N = cu.numel() - 1
        BK, BV = _blocks(K, V)
        acc, ACC = _acc(q.dtype)
        prec = _prec(q.dtype)
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        dh = q.new_empty(NC, H, K, V, dtype=h.dtype)
        dh0 = torch.empty(N, H, K, V, dtype=acc, device=q.device) if h0 is not None else None
        opts = launch_options("gla.bwd_dh", num_warps=4, num_stages=3, BK=BK, BV=BV)
        _bwd_dh_kernel[(triton.cdiv(K, opts["BK"]), triton.cdiv(V, opts["BV"]), N * H)](
            q, do, gc, dh, dht if dht is not None else q, dh0 if dh0 is not None else q, cu, offsets, scale,
            H=H, K=K, V=V, BT=BT, ACC=ACC, PREC=prec, USE_DHT=dht is not None, STORE_DH0=dh0 is not None, **opts,
        )
        dv = torch.empty_like(v)
        dA = torch.empty(T, H, BT, dtype=acc, device=q.device)
        _bwd_dv_dA_kernel[(NC, H)](
            k, v, gc, A, do, dh, dv, dA, cu, indices, scale,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, ACC=ACC, PREC=prec,
            **launch_options("gla.bwd_dv_dA", num_warps=4, num_stages=3),
        )
        dq, dk = torch.empty_like(q), torch.empty_like(k)
        dg = torch.empty(q.shape, dtype=acc, device=q.device) if g_grad else None  # [1, T, H, K]
        if DQK_BY_LEVELS:  # dq, dk and dg in one kernel
            opts = launch_options("gla.bwd_dqk_levels", num_warps=8, num_stages=1, BK=min(BK, 32))
            _bwd_dqk_levels_kernel[(triton.cdiv(K, opts["BK"]), NC, H)](
                q, k, v, gc, h, do, dh, dA, dq, dk, dg if g_grad else dq, cu, indices, scale,
                H=H, K=K, V=V, BT=BT, LOG_BT=BT.bit_length() - 1, BV=BV, ACC=ACC, PREC=prec, STORE_DG=g_grad,
                **opts,
            )
        else:
            _bwd_dqk_kernel[(triton.cdiv(K, BK), NC * (BT // BC), H)](
                q, k, v, gc, h, do, dh, dA, dq, dk, cu, indices, scale,
                H=H, K=K, V=V, BT=BT, BC=BC, BK=BK, BV=BV, ACC=ACC, PREC=prec,
                **launch_options("gla.bwd_dqk", num_warps=4, num_stages=3),
            )
            if g_grad:  # per token and directly (the final state's seed is in dh)
                _bwd_dg_kernel[(triton.cdiv(K, BK), NC, H)](
                    q, k, v, gc, h, do, dh, dA, dg, cu, indices, scale,
                    H=H, K=K, V=V, BT=BT, BC=BC, BK=BK, BV=BV, ACC=ACC, PREC=prec,
                    **launch_options("gla.bwd_dg", num_warps=8, num_stages=1),  # ptxas: 96 B spilled (4 warps: 1.2 KB)
                )
        if dg is not None:
            dg = dg.to(g_dtype)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dq, dk, dv, dg, dh0, None, None, None, None, None, None


def gla_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    scale: float = 1.0,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = KERNEL_CHUNK,
    sub_chunk: int = SUB_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """Chunked GLA on the GPU (inputs already checked by the caller).

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H, K] log forget gate (<= 0); scale: applied to
    q k^T; initial_state: [N, H, K, V] (N sequences); cu_seqlens: [N+1] int offsets into T for
    packed variable lengths (B must be 1) or None; chunk_size, sub_chunk: powers of two, sub_chunk
    dividing chunk_size (tile sizes, results do not depend on them; on a GPU chunk_size >= 32 and
    sub_chunk >= 16, the smallest tl.dot tile, else ValueError; the CPU interpreter's tests use
    smaller ones to run faster). Returns o [B, T, H, V] (q's dtype) and the final state
    [N, H, K, V] (float32; float64 for float64 inputs) or None. fp32 accumulation, gate cumsums and
    final state for half inputs; the per-chunk states between kernels are kept in the input dtype
    (their readers round them to it: ``triton_scalar_decay._state_dtype``).
    """
    pow2 = lambda n: n > 0 and n & (n - 1) == 0
    if not (pow2(chunk_size) and pow2(sub_chunk) and sub_chunk <= chunk_size):
        raise ValueError(f"gla_chunk: chunk_size {chunk_size} and sub_chunk {sub_chunk} must be powers of "
                         "two, sub_chunk <= chunk_size")
    if q.is_cuda and (chunk_size < 32 or sub_chunk < 16):
        # sub-chunks below 16 are under tl.dot's smallest tile; chunks of 16 do not compile
        # (Triton 3.6 asserts in TritonGPUCoalesce on _bwd_dqk_kernel, H100 and H200, 2026-12-06)
        raise ValueError(f"gla_chunk: on a GPU chunk_size must be >= 32 and sub_chunk >= 16, got "
                         f"chunk_size {chunk_size}, sub_chunk {sub_chunk} (smaller tiles are for the "
                         "CPU interpreter; chunks of 16 do not compile with Triton 3.6)")
    B, T, H, _ = q.shape
    cu, flat = packed_sequences(B, T, q.device, cu_seqlens)
    q, k, v, g = (flat(t).contiguous() for t in (q, k, v, g))
    h0 = initial_state.contiguous() if initial_state is not None else None
    if grad_wanted(q, k, v, g, h0):
        o, ht = _GlaFn.apply(q, k, v, g, h0, float(scale), output_final_state, cu, chunk_size, sub_chunk, True)
    else:
        o, ht = _inference(q, k, v, g, h0, float(scale), output_final_state, cu, chunk_size, sub_chunk)
    return o.reshape(B, T, H, v.shape[-1]), ht

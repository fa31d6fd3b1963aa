"""Triton kernels of chunked linear attention with a scalar (per token, per head) decay.

One family covers linear attention (no decay), retention (a fixed decay per head), simple GLA
(a data-dependent decay per token and head) and Mamba-2's SSD (decay ``dt A``, input ``dt x``):
    S_t = exp(g_t) S_{t-1} + k_t v_t^T,        o_t = scale * q_t^T S_t        (S: [K, V])
In chunks of C tokens with the chunk-local cumulative sums ``G_i = g_0 + ... + g_i`` (<= 0):
    O_[n] = scale * ((Q K^T ⊙ D) V + (Q ⊙ e^G) S_n),      D_ij = exp(G_i - G_j) [i >= j]
    S_{n+1} = e^{G_last} S_n + (K ⊙ e^{G_last - G})^T V
(Yang et al. 2024, GLA §4 / Sun et al. 2023, RetNet eq. 7; the kernel split into a sequential
state pass and a chunk-parallel output pass follows the flash-linear-attention design.)

With no gradient wanted (inference, prefill) the forward need keep no per-chunk states, the largest
tensors of the forward (at T = 64k, H = 16, K = V = 128 in bf16: 537 MB, written once and read
once, against 268 MB for each of q, k, v and o); the training forward keeps them for the backward
pass. The grouped forward (``_forward_grouped``; on a GPU where the sequence gives enough groups,
``_chunks_per_group``: 11-22% faster than the per-chunk kernels from T = 16k on an H100) finds S
at every GS-th chunk start by a two-level pass (each group's own part, all groups at once; then a
scan over the groups) and its output pass (``_fwd_grouped_kernel``) walks each group's GS chunks
from there, updating S in registers. ``LOOKBACK_FORWARD`` (off until timed on a GPU) does the same
in one launch: each group's program sums its own part, finds the state at its start by decoupled
look-back over the earlier groups' published parts (``_fwd_lookback_kernel``), then walks its
chunks; no state goes through memory but two per group.

Every sequence layout is handled as packed variable lengths: ``[B, T]`` inputs are viewed as
``[1, B*T]`` with ``cu_seqlens = [0, T, 2T, ...]``; chunks never cross a sequence boundary.

Backward (derived here): with dH_{n+1} the gradient of the state after chunk n,
    dH_n = e^{G_last} dH_{n+1} + scale (Q ⊙ e^G)^T dO      (a reverse sequential pass)
    dQ = scale (dO S_n^T ⊙ e^G + (dO V^T ⊙ D) K),   dK = (V dH^T) ⊙ e^{G_last - G} + (dO V^T ⊙ D)^T Q
    dV = scale (Q K^T ⊙ D)^T dO + (K ⊙ e^{G_last - G}) dH_{n+1}
and the decay's gradient per token and directly, dg_i = <dS_i, ∂S_i/∂g_i> = e^{g_i} <S_{i-1}, dS_i>,
in the chunk's terms (S_{i-1} and dS_i expanded around S_n and dH_{n+1}):
    dg_i = sum_{t >= i} q_t . dq_t^inter + e^{G_last} <S_n, dH_{n+1}> + sum_{j < i} k_j . dk_j^inter
           + sum_{t >= i > j} scale (q_t . k_j) D_tj (do_t . v_j)
(dq^inter = scale e^G ⊙ dO S_n^T, dk^inter = e^{G_last - G} ⊙ V dH_{n+1}^T). Each term carries the
decays between its tokens. The identity dGglob_t = q_t . dq_t - k_t . dk_t, reverse-summed over
the sequence, gives the same in exact arithmetic, but its terms cancel down to dg's size: with
harsh decays dg's error was 0.13 in float16 (1e-4 in float32) against 5e-4 (2e-7) for the other
gradients; the direct form measured 5.7e-4 (1.5e-5, bounded by the chunk's fp32 cumulative G).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from longctx.ops.common.backend import stream_capturing
from longctx.ops.common.triton_launch import launch_options


@triton.jit
def _chunk_cumsum_kernel(g, gc, cu_seqlens, chunk_indices, H: tl.constexpr, BT: tl.constexpr):
    """gc = the cumulative sum of g within each chunk (fp32); grid (chunks, H)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    rows = i_t * BT + tl.arange(0, BT)
    m = rows < T
    b_g = tl.load(g + (bos + rows) * H + i_h, mask=m, other=0.0)
    tl.store(gc + (bos + rows) * H + i_h, tl.cumsum(b_g, axis=0), mask=m)


@triton.jit
def _sequence(cu_seqlens, chunk_offsets, i_n, BT: tl.constexpr):
    """Sequence i_n's first token, length, chunk count and first global chunk."""
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    T = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    return bos, T, tl.cdiv(T, BT), tl.load(chunk_offsets + i_n).to(tl.int64)


@triton.jit
def _chunk(cu_seqlens, chunk_indices, i_c):
    """Global chunk i_c (of ``chunk_layout``'s indices): its index within its sequence, the
    sequence's first token and its length."""
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    i_t = tl.load(chunk_indices + i_c * 2 + 1)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    T = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    return i_t, bos, T


@triton.jit
def _load_g(gc, bos, T, i_t, i_h, H: tl.constexpr, BT: tl.constexpr):
    """The chunk's G (fp32) and G at its last real token; rows past the end take G_last, so no
    e^{G_i - G_j} of the chunk has a positive exponent (0 there would overflow to inf once the
    chunk's decay passes e^-88 in fp32, and 0 * inf = NaN would reach the real rows' gradients)."""
    rows = i_t * BT + tl.arange(0, BT)
    last = tl.minimum(i_t * BT + BT, T) - 1
    g_last = tl.load(gc + (bos + last) * H + i_h)
    b_g = tl.load(gc + (bos + rows) * H + i_h, mask=rows < T, other=0.0)
    b_g = tl.where(rows < T, b_g, g_last)
    return b_g, g_last


@triton.jit
def _load_g_if(gc, bos, T, i_t, i_h, H: tl.constexpr, BT: tl.constexpr, HAS_G: tl.constexpr):
    """``_load_g`` with a decay (HAS_G); without one G = 0 and G_last = 0."""
    if HAS_G:
        b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
    else:
        b_g, g_last = tl.zeros([BT], dtype=tl.float32), 0.0
    return b_g, g_last


@triton.jit
def _kt_v(k, v, bos, T, i_t, i_h, i_k, i_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
          BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Chunk i_t's K^T [BK, BT] (key dims of block i_k, loaded transposed) and V [BT, BV]."""
    p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (K, T), (1, H * K), (i_k * BK, i_t * BT), (BK, BT), (0, 1))
    p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    return tl.load(p_k, boundary_check=(0, 1)), tl.load(p_v, boundary_check=(0, 1))


@triton.jit
def _h_step(b_h, k, v, gc, bos, T, i_t, i_h, i_k, i_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr, PREC: tl.constexpr):
    """One [BK, BV] tile of S through chunk i_t: e^{G_last} S + K^T (V ⊙ e^{G_last - G}); returns
    it and G_last (0 without a decay)."""
    b_k, b_v = _kt_v(k, v, bos, T, i_t, i_h, i_k, i_v, H, K, V, BT, BK, BV)
    g_last = 0.0
    if HAS_G:
        b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
        b_h *= tl.exp(g_last)
        b_v = (b_v * tl.exp(g_last - b_g)[:, None]).to(b_k.dtype)  # V ⊙ e^{G_last - G}
    return b_h + tl.dot(b_k, b_v, input_precision=PREC), g_last


@triton.jit
def _rows_t(x, bos, T, i_t, i_h, p, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr):
    """Key dims [p BP, p BP + BP) of a chunk of a [T, H, K] tensor, loaded transposed: [BP, BT]
    (zero past T and K)."""
    ptr = tl.make_block_ptr(x + (bos * H + i_h) * K, (K, T), (1, H * K), (p * BP, i_t * BT), (BP, BT), (0, 1))
    return tl.load(ptr, boundary_check=(0, 1), padding_option="zero")


@triton.jit
def _cols(x, bos, T, i_t, i_h, p, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr):
    """Key dims [p BP, p BP + BP) of a chunk of a [T, H, K] tensor: [BT, BP] (zero past T and K)."""
    ptr = tl.make_block_ptr(x + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, p * BP), (BT, BP), (1, 0))
    return tl.load(ptr, boundary_check=(0, 1), padding_option="zero")


@triton.jit
def _state_ptr(x, i_s, i_v, p, K: tl.constexpr, V: tl.constexpr, BP: tl.constexpr, BV: tl.constexpr):
    """Block pointer to rows [p BP, p BP + BP) and columns of block i_v of state i_s of x [.., K, V]."""
    return tl.make_block_ptr(x + i_s.to(tl.int64) * K * V, (K, V), (V, 1), (p * BP, i_v * BV), (BP, BV), (1, 0))


@triton.jit
def _init_pieces(x, i_s, i_v, LOAD: tl.constexpr, ACC: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                 BK: tl.constexpr, BV: tl.constexpr):
    """A state held as four pieces of BK rows (K <= 4 BK), columns of block i_v: state i_s of x
    when LOAD, else zeros; [BK, BV] tiles in ACC, the ones past K zero (tiles that no loop then
    carries and no store writes are dead code)."""
    b1 = tl.zeros([BK, BV], dtype=ACC)
    b2 = tl.zeros([BK, BV], dtype=ACC)
    b3 = tl.zeros([BK, BV], dtype=ACC)
    b4 = tl.zeros([BK, BV], dtype=ACC)
    if LOAD:
        b1 += tl.load(_state_ptr(x, i_s, i_v, 0, K, V, BK, BV), boundary_check=(0, 1), padding_option="zero").to(ACC)
        if K > BK:
            b2 += tl.load(_state_ptr(x, i_s, i_v, 1, K, V, BK, BV), boundary_check=(0, 1), padding_option="zero").to(ACC)
        if K > 2 * BK:
            b3 += tl.load(_state_ptr(x, i_s, i_v, 2, K, V, BK, BV), boundary_check=(0, 1), padding_option="zero").to(ACC)
        if K > 3 * BK:
            b4 += tl.load(_state_ptr(x, i_s, i_v, 3, K, V, BK, BV), boundary_check=(0, 1), padding_option="zero").to(ACC)
    return b1, b2, b3, b4


@triton.jit
def _store_pieces(x, i_s, i_v, b1, b2, b3, b4, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr):
    """Store the pieces of rows of state i_s (columns of block i_v) that K has: [BK, BV] each."""
    tl.store(_state_ptr(x, i_s, i_v, 0, K, V, BK, BV), b1.to(x.dtype.element_ty), boundary_check=(0, 1))
    if K > BK:
        tl.store(_state_ptr(x, i_s, i_v, 1, K, V, BK, BV), b2.to(x.dtype.element_ty), boundary_check=(0, 1))
    if K > 2 * BK:
        tl.store(_state_ptr(x, i_s, i_v, 2, K, V, BK, BV), b3.to(x.dtype.element_ty), boundary_check=(0, 1))
    if K > 3 * BK:
        tl.store(_state_ptr(x, i_s, i_v, 3, K, V, BK, BV), b4.to(x.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _h_piece_out(b_h, b_kt, b_d, b_g, g_last, HAS_G: tl.constexpr, GATE_K: tl.constexpr, PREC: tl.constexpr):
    """S (one piece of rows) after the chunk: e^{G_last} S + (K ⊙ e^{G_last - G})^T Delta, the gate
    put on this piece of K^T (GATE_K) or already on Delta's rows by the caller."""
    if HAS_G:
        b_h *= tl.exp(g_last)
        if GATE_K:
            b_kt = (b_kt * tl.exp(g_last - b_g)[None, :]).to(b_kt.dtype)
    return b_h + tl.dot(b_kt, b_d.to(b_kt.dtype), input_precision=PREC)


@triton.jit
def _pieces_out(b_h1, b_h2, b_h3, b_h4, k, b_d, b_g, g_last, bos, T, i_t, i_h, H: tl.constexpr,
                K: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, HAS_G: tl.constexpr, PREC: tl.constexpr,
                GATE_D: tl.constexpr):
    """``_h_piece_out`` for each piece of rows K has (K^T reloaded per piece: a cache hit, fewer
    live registers than keeping the chunk's K^T through the step). GATE_D: the gate goes on
    Delta's rows once, (K ⊙ e^{G_last - G})^T Delta = K^T (e^{G_last - G} ⊙ Delta), and each K^T
    piece from its load straight into the product, as ``_h_step`` and the ungated pass do
    (``GATE_ON_DELTA``); else on every K^T piece in registers."""
    if HAS_G and GATE_D:
        b_d = b_d * tl.exp(g_last - b_g)[:, None]
    b_h1 = _h_piece_out(b_h1, _rows_t(k, bos, T, i_t, i_h, 0, H, K, BT, BP), b_d, b_g, g_last, HAS_G, not GATE_D, PREC)
    if K > BP:
        b_h2 = _h_piece_out(b_h2, _rows_t(k, bos, T, i_t, i_h, 1, H, K, BT, BP), b_d, b_g, g_last, HAS_G, not GATE_D,
                            PREC)
    if K > 2 * BP:
        b_h3 = _h_piece_out(b_h3, _rows_t(k, bos, T, i_t, i_h, 2, H, K, BT, BP), b_d, b_g, g_last, HAS_G, not GATE_D,
                            PREC)
    if K > 3 * BP:
        b_h4 = _h_piece_out(b_h4, _rows_t(k, bos, T, i_t, i_h, 3, H, K, BT, BP), b_d, b_g, g_last, HAS_G, not GATE_D,
                            PREC)
    return b_h1, b_h2, b_h3, b_h4


@triton.jit
def _sum_after(x):
    """sum_{t > i} x_t for every row i of a chunk (axis 0; x [BT] or [BT, BK])."""
    return tl.sum(x, axis=0, keep_dims=True) - tl.cumsum(x, axis=0)


@triton.jit
def _sum_before(x):
    """sum_{j < i} x_j for every row i of a chunk (axis 0; x [BT] or [BT, BK])."""
    return tl.cumsum(x, axis=0) - x


@triton.jit
def _direct_dg(b_a, b_e, b_straddle, b_carry):
    """The decay's gradient per token of a chunk from its direct terms (rows i of a [BT] or [BT, BK]):
    sum_{t >= i} a_t (reads of the state entering the chunk) + sum_{j < i} e_j (sources into the
    state leaving it) + the pairs straddling i + the state carried through the chunk."""
    return b_straddle + _sum_after(b_a) + b_a + _sum_before(b_e) + b_carry


@triton.jit
def _straddle_sum(M, rows):
    """sum_t [rows_ti] sum_{j < i} M_tj for every i ([BT]): the pairs (t, j) of a chunk that
    straddle token i (``rows``: t >= i or t > i as a [BT, BT] mask over [t, i])."""
    return tl.sum(tl.where(rows, tl.cumsum(M, axis=1) - M, 0.0), axis=0)


@triton.jit
def _fwd_h_kernel(
    k, v, gc, h, h0, ht, cu_seqlens, chunk_offsets,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    """The state S_n at every chunk start (into h) and the final state; grid (K/BK, V/BV, N*H)."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    b_h = tl.zeros([BK, BV], dtype=ACC)
    if USE_H0:
        p_h0 = tl.make_block_ptr(h0 + i_nh.to(tl.int64) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        b_h += tl.load(p_h0, boundary_check=(0, 1))
    for i_t in range(NT):
        p_h = tl.make_block_ptr(h + ((boh + i_t) * H + i_h) * K * V, (K, V), (V, 1),
                                (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_h, b_h.to(p_h.dtype.element_ty), boundary_check=(0, 1))
        b_h, _ = _h_step(b_h, k, v, gc, bos, T, i_t, i_h, i_k, i_v, H, K, V, BT, BK, BV, HAS_G, PREC)
    if STORE_HT:
        p_ht = tl.make_block_ptr(ht + i_nh.to(tl.int64) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_ht, b_h.to(p_ht.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _fwd_o_kernel(
    q, k, v, gc, h, o, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """O_[n] = scale ((Q K^T ⊙ D) V + (Q ⊙ e^G) S_n); grid (V/BV, chunks, H)."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    b_o = tl.zeros([BT, BV], dtype=ACC)
    b_A = tl.zeros([BT, BT], dtype=ACC)
    for i_k in range(tl.cdiv(K, BK)):
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (K, T), (1, H * K),
                                (i_k * BK, i_t * BT), (BK, BT), (0, 1))
        p_h = tl.make_block_ptr(h + (i_c * H + i_h).to(tl.int64) * K * V, (K, V), (V, 1),
                                (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1))
        b_k = tl.load(p_k, boundary_check=(0, 1))
        b_h = tl.load(p_h, boundary_check=(0, 1))
        b_o += tl.dot(b_q, b_h.to(b_q.dtype), input_precision=PREC)
        b_A += tl.dot(b_q, b_k, input_precision=PREC)
    idx = tl.arange(0, BT)
    causal = idx[:, None] >= idx[None, :]
    if HAS_G:
        b_g, _ = _load_g(gc, bos, T, i_t, i_h, H, BT)
        b_o *= tl.exp(b_g)[:, None]
        b_A *= tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], float("-inf")))  # no exp(+x)
    else:
        b_A = tl.where(causal, b_A, 0.0)
    p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1),
                            (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    b_v = tl.load(p_v, boundary_check=(0, 1))
    b_o = (b_o + tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)) * scale
    p_o = tl.make_block_ptr(o + (bos * H + i_h) * V, (T, V), (H * V, 1),
                            (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _fwd_h_group_kernel(
    k, v, gc, hl, gtot, cu_seqlens, group_indices, GS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """Each group's own contribution to the state, its GS chunks from a zero state (into hl, fp32),
        L_g = sum_{n in g} e^{G_g - G_{n+1}} (K_n ⊙ e^{G_last,n - G_n})^T V_n,
    and its total log decay G_g (into gtot, [groups, H]; by the programs of tile (0, 0)): the
    groups are independent, so this pass runs GS chunks deep, not T / BT; grid (K/BK, V/BV,
    groups * H)."""
    i_k, i_v, i_gh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_g, i_h = i_gh // H, i_gh % H
    i_s, bos, T = _chunk(cu_seqlens, group_indices, i_g)
    b_h = tl.zeros([BK, BV], dtype=ACC)
    b_gt = tl.zeros([1], dtype=ACC)
    for i_t in range(i_s * GS, tl.minimum(i_s * GS + GS, tl.cdiv(T, BT))):
        b_h, g_last = _h_step(b_h, k, v, gc, bos, T, i_t, i_h, i_k, i_v, H, K, V, BT, BK, BV, HAS_G, PREC)
        b_gt += g_last
    p_l = tl.make_block_ptr(hl + i_gh.to(tl.int64) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
    tl.store(p_l, b_h.to(p_l.dtype.element_ty), boundary_check=(0, 1))
    if HAS_G:
        tl.store(gtot + i_gh + tl.arange(0, 1), b_gt, mask=(i_k == 0) & (i_v == 0))


@triton.jit
def _fwd_h_scan_kernel(
    hl, gtot, h, h0, ht, group_offsets,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_G: tl.constexpr, ACC: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
    GK: tl.constexpr = False,
):
    """The state at every group start (into h), S_{g+1} = e^{G_g} S_g + L_g in order over the
    sequence's groups (one tile load, scale and add each), and the final state; grid (K/BK, V/BV,
    N*H). GK: the groups' log decays are per key dim, gtot [groups, H, K] (GLA's
    ``diag(e^{G_g})``), else one per head, gtot [groups, H]."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    g0 = tl.load(group_offsets + i_n).to(tl.int64)
    NG = tl.load(group_offsets + i_n + 1).to(tl.int64) - g0
    b_h = tl.zeros([BK, BV], dtype=ACC)
    if USE_H0:
        b_h += tl.load(_state_ptr(h0, i_nh, i_v, i_k, K, V, BK, BV), boundary_check=(0, 1))
    for i_s in range(NG):
        i_gh = (g0 + i_s) * H + i_h
        tl.store(_state_ptr(h, i_gh, i_v, i_k, K, V, BK, BV), b_h.to(h.dtype.element_ty), boundary_check=(0, 1))
        if GK:
            cols = i_k * BK + tl.arange(0, BK)
            b_h *= tl.exp(tl.load(gtot + i_gh * K + cols, mask=cols < K, other=0.0))[:, None]
        elif HAS_G:
            b_h *= tl.exp(tl.load(gtot + i_gh))
        b_h += tl.load(_state_ptr(hl, i_gh, i_v, i_k, K, V, BK, BV), boundary_check=(0, 1))
    if STORE_HT:
        tl.store(_state_ptr(ht, i_nh, i_v, i_k, K, V, BK, BV), b_h.to(ht.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _group_outputs(q, k, v, gc, o, b_h1, b_h2, b_h3, b_h4, bos, T, i_s, i_h, i_v, GS, scale,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
                   BV: tl.constexpr, HAS_G: tl.constexpr, PREC: tl.constexpr, GATE_D: tl.constexpr):
    """O of the chunks of group i_s (GS chunks) from S at the group's start (pieces b_h1..b_h4 of
    BP rows, columns of block i_v), S carried from chunk to chunk in registers:
        O_[n] = scale ((Q K^T ⊙ D) V + (Q ⊙ e^G) S_n),  S_{n+1} = e^{G_last} S_n + (K ⊙ e^{G_last - G})^T V
    Returns S after the group."""
    idx = tl.arange(0, BT)
    causal = idx[:, None] >= idx[None, :]
    for i_t in range(i_s * GS, tl.minimum(i_s * GS + GS, tl.cdiv(T, BT))):
        # Q S_n and Q K^T, summed over the pieces of key dims
        b_q = _cols(q, bos, T, i_t, i_h, 0, H, K, BT, BP)
        b_o = tl.dot(b_q, b_h1.to(b_q.dtype), input_precision=PREC)
        b_A = tl.dot(b_q, _rows_t(k, bos, T, i_t, i_h, 0, H, K, BT, BP), input_precision=PREC)
        if K > BP:
            b_q = _cols(q, bos, T, i_t, i_h, 1, H, K, BT, BP)
            b_o += tl.dot(b_q, b_h2.to(b_q.dtype), input_precision=PREC)
            b_A += tl.dot(b_q, _rows_t(k, bos, T, i_t, i_h, 1, H, K, BT, BP), input_precision=PREC)
        if K > 2 * BP:
            b_q = _cols(q, bos, T, i_t, i_h, 2, H, K, BT, BP)
            b_o += tl.dot(b_q, b_h3.to(b_q.dtype), input_precision=PREC)
            b_A += tl.dot(b_q, _rows_t(k, bos, T, i_t, i_h, 2, H, K, BT, BP), input_precision=PREC)
        if K > 3 * BP:
            b_q = _cols(q, bos, T, i_t, i_h, 3, H, K, BT, BP)
            b_o += tl.dot(b_q, b_h4.to(b_q.dtype), input_precision=PREC)
            b_A += tl.dot(b_q, _rows_t(k, bos, T, i_t, i_h, 3, H, K, BT, BP), input_precision=PREC)
        if HAS_G:
            b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
            b_o *= tl.exp(b_g)[:, None]
            b_A *= tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], float("-inf")))  # no exp(+x)
        else:
            b_g, g_last = tl.zeros([BT], dtype=tl.float32), 0.0
            b_A = tl.where(causal, b_A, 0.0)
        p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")
        b_o = (b_o + tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)) * scale
        p_o = tl.make_block_ptr(o + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_o, b_o.to(p_o.dtype.element_ty), boundary_check=(0, 1))
        b_h1, b_h2, b_h3, b_h4 = _pieces_out(b_h1, b_h2, b_h3, b_h4, k, b_v, b_g, g_last, bos, T, i_t, i_h,
                                             H, K, BT, BP, HAS_G, PREC, GATE_D)  # S_{n+1}
    return b_h1, b_h2, b_h3, b_h4


@triton.jit
def _fwd_grouped_kernel(
    q, k, v, gc, h, o, cu_seqlens, group_indices, scale, GS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, GATE_D: tl.constexpr,
):
    """O of the GS chunks of one group (``chunk_layout`` at GS BT tokens) from the state at the
    group's start (h: one per group, fp32), S carried from chunk to chunk in registers
    (``_group_outputs``); grid (V/BV, groups, H). S is held as up to four pieces of BP <= 64 rows
    (K <= 4 BP), so no product has more than 64 rows (``_delta_h_kernel``'s layout)."""
    tl.static_assert(BP <= 64 and K <= 4 * BP, "S is held as up to four pieces of at most 64 rows")
    i_v, i_g, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_s, bos, T = _chunk(cu_seqlens, group_indices, i_g)
    b_h1, b_h2, b_h3, b_h4 = _init_pieces(h, i_g * H + i_h, i_v, True, ACC, K, V, BP, BV)
    _group_outputs(q, k, v, gc, o, b_h1, b_h2, b_h3, b_h4, bos, T, i_s, i_h, i_v, GS, scale,
                   H, K, V, BT, BP, BV, HAS_G, PREC, GATE_D)


@triton.jit
def _group_sum(k, v, gc, bos, T, i_s, i_h, i_v, GS, ACC: tl.constexpr, H: tl.constexpr, K: tl.constexpr,
               V: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr,
               PREC: tl.constexpr, GATE_D: tl.constexpr):
    """Group i_s's own contribution to S from a zero state, L_g = sum_n e^{G_g - G_{n+1}} (K_n ⊙
    e^{G_last,n - G_n})^T V_n (pieces of BP rows, columns of block i_v), and its log decay G_g, the
    sum of its chunks' G_last (0 without a decay): the same steps as ``_group_outputs``' state."""
    b_h1, b_h2, b_h3, b_h4 = _init_pieces(k, 0, i_v, False, ACC, K, V, BP, BV)
    a = tl.sum(tl.zeros([1], dtype=ACC), axis=0)
    for i_t in range(i_s * GS, tl.minimum(i_s * GS + GS, tl.cdiv(T, BT))):
        p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_v = tl.load(p_v, boundary_check=(0, 1), padding_option="zero")
        b_g, g_last = _load_g_if(gc, bos, T, i_t, i_h, H, BT, HAS_G)
        b_h1, b_h2, b_h3, b_h4 = _pieces_out(b_h1, b_h2, b_h3, b_h4, k, b_v, b_g, g_last, bos, T, i_t, i_h,
                                             H, K, BT, BP, HAS_G, PREC, GATE_D)
        a += g_last
    return b_h1, b_h2, b_h3, b_h4, a


@triton.jit
def _add_state(b1, b2, b3, b4, x, i_s, i_v, w, K: tl.constexpr, V: tl.constexpr, BP: tl.constexpr,
               BV: tl.constexpr):
    """The pieces plus w times state i_s of x [.., K, V] (columns of block i_v), read from L2 (.cg:
    another program wrote it during this launch; no stale L1 line)."""
    b1 += w * tl.load(_state_ptr(x, i_s, i_v, 0, K, V, BP, BV), boundary_check=(0, 1), padding_option="zero",
                      cache_modifier=".cg")
    if K > BP:
        b2 += w * tl.load(_state_ptr(x, i_s, i_v, 1, K, V, BP, BV), boundary_check=(0, 1), padding_option="zero",
                          cache_modifier=".cg")
    if K > 2 * BP:
        b3 += w * tl.load(_state_ptr(x, i_s, i_v, 2, K, V, BP, BV), boundary_check=(0, 1), padding_option="zero",
                          cache_modifier=".cg")
    if K > 3 * BP:
        b4 += w * tl.load(_state_ptr(x, i_s, i_v, 3, K, V, BP, BV), boundary_check=(0, 1), padding_option="zero",
                          cache_modifier=".cg")
    return b1, b2, b3, b4


@triton.jit
def _publish(x, i_s, i_v, b1, b2, b3, b4, flag, status, K: tl.constexpr, V: tl.constexpr, BP: tl.constexpr,
             BV: tl.constexpr):
    """Store the pieces as state i_s of x, then set ``flag`` to ``status`` (release: a program that
    reads the flag with acquire, ``_wait``, then sees the stores)."""
    _store_pieces(x, i_s, i_v, b1, b2, b3, b4, K, V, BP, BV)
    tl.debug_barrier()  # every thread's stores before the flag
    tl.atomic_xchg(flag, status, sem="release")


@triton.jit
def _wait(flag):
    """The status of ``flag`` once it is not 0 (spins; acquire)."""
    f = tl.atomic_add(flag, 0, sem="acquire")
    while f == 0:
        f = tl.atomic_add(flag, 0, sem="acquire")
    return f


@triton.jit
def _look_back(agg, inc, dec, flags, i_g, i_h, i_v, NV, ACC: tl.constexpr, H: tl.constexpr, K: tl.constexpr,
               V: tl.constexpr, BP: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr):
    """The state entering group i_g (not its sequence's first) by decoupled look-back (Merrill &
    Garland 2016, single-pass prefix scan): back over the earlier groups p = i_g - 1, i_g - 2, ...,
    adding each one's own part L_p (status 1, in agg) decayed to i_g's start, until one has published
    its state at its end (status 2, in inc; a sequence's first group always does, so the walk stays
    inside the sequence): S_{i_g} = sum_p e^{G_{p+1} + ... + G_{i_g - 1}} L_p + e^{...} S_{p*+1}."""
    b1, b2, b3, b4 = _init_pieces(agg, 0, i_v, False, ACC, K, V, BP, BV)
    d = tl.sum(tl.zeros([1], dtype=ACC), axis=0)  # log decay from p's end to i_g's start
    p = i_g
    f = tl.sum(tl.zeros([1], dtype=tl.int32), axis=0)
    while f != 2:
        p -= 1
        i_ph = p * H + i_h
        f = _wait(flags + i_ph * NV + i_v)
        w = tl.exp(d)
        if f == 2:
            b1, b2, b3, b4 = _add_state(b1, b2, b3, b4, inc, i_ph, i_v, w, K, V, BP, BV)
        else:
            b1, b2, b3, b4 = _add_state(b1, b2, b3, b4, agg, i_ph, i_v, w, K, V, BP, BV)
            if HAS_G:
                d += tl.load(dec + i_ph * NV + i_v, cache_modifier=".cg")
    return b1, b2, b3, b4


@triton.jit
def _fwd_lookback_kernel(
    q, k, v, gc, h0, ht, o, agg, inc, dec, flags, cu_seqlens, group_indices, scale, GS, NV,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, GATE_D: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HT: tl.constexpr, INCLUSIVE: tl.constexpr = True,
):
    """The inference forward in one pass (``LOOKBACK_FORWARD``): each program takes a group of GS
    chunks of one head and value block in order of a ticket (an atomic counter: every group it
    waits for took its ticket earlier, so is running or done; no deadlock), sums the group's own
    part L_g (``_group_sum``) and publishes it (status 1), finds the state entering the group by
    look-back (``_look_back``; the sequence's first group: the initial state), publishes the state
    at its end, e^{G_g} S_g + L_g (status 2), then writes the group's outputs from S_g
    (``_group_outputs``). flags [groups * H * NV + 1] int32, zero (the last: the ticket counter);
    agg, inc [groups, H, K, V], dec [groups * H * NV] fp32. One launch: q, k, v read about once
    (k and v twice, the second time mostly from L2), o written once, no per-chunk states.
    INCLUSIVE False (tests only): no group but a sequence's first publishes status 2, so every
    look-back walks to it (in the interpreter the programs run in order and find status 2 a step
    back). Grid (groups * H * NV,)."""
    tl.static_assert(BP <= 64 and K <= 4 * BP, "S is held as up to four pieces of at most 64 rows")
    t = tl.atomic_add(flags + tl.num_programs(0), 1)
    i_g, i_hv = t // (H * NV), t % (H * NV)
    i_h, i_v = i_hv // NV, i_hv % NV
    i_n = tl.load(group_indices + i_g * 2).to(tl.int64)
    i_s, bos, T = _chunk(cu_seqlens, group_indices, i_g)
    i_gh = i_g * H + i_h
    flag = flags + i_gh * NV + i_v
    l1, l2, l3, l4, a = _group_sum(k, v, gc, bos, T, i_s, i_h, i_v, GS, ACC, H, K, V, BT, BP, BV, HAS_G, PREC,
                                   GATE_D)
    if i_s == 0:
        s1, s2, s3, s4 = _init_pieces(h0, i_n * H + i_h, i_v, USE_H0, ACC, K, V, BP, BV)
    else:
        tl.store(dec + i_gh * NV + i_v, a)
        _publish(agg, i_gh, i_v, l1, l2, l3, l4, flag, 1, K, V, BP, BV)
        s1, s2, s3, s4 = _look_back(agg, inc, dec, flags, i_g, i_h, i_v, NV, ACC, H, K, V, BP, BV, HAS_G)
    e = tl.exp(a)
    e1, e2, e3, e4 = e * s1 + l1, e * s2 + l2, e * s3 + l3, e * s4 + l4  # the state at the group's end
    if INCLUSIVE or i_s == 0:
        _publish(inc, i_gh, i_v, e1, e2, e3, e4, flag, 2, K, V, BP, BV)
    if STORE_HT and i_s == tl.cdiv(tl.cdiv(T, BT), GS) - 1:  # the sequence's last group
        _store_pieces(ht, i_n * H + i_h, i_v, e1, e2, e3, e4, K, V, BP, BV)
    _group_outputs(q, k, v, gc, o, s1, s2, s3, s4, bos, T, i_s, i_h, i_v, GS, scale,
                   H, K, V, BT, BP, BV, HAS_G, PREC, GATE_D)


@triton.jit
def _bwd_dh_kernel(
    q, do, gc, dh, dht, dh0, cu_seqlens, chunk_offsets, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
):
    """dH_{n+1} for every chunk n (into dh), reverse over chunks; grid (K/BK, V/BV, N*H)."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    b_dh = tl.zeros([BK, BV], dtype=ACC)
    if USE_DHT:
        p_dht = tl.make_block_ptr(dht + i_nh.to(tl.int64) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        b_dh += tl.load(p_dht, boundary_check=(0, 1))
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        p_dh = tl.make_block_ptr(dh + ((boh + i_t) * H + i_h) * K * V, (K, V), (V, 1),
                                 (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_dh, b_dh.to(p_dh.dtype.element_ty), boundary_check=(0, 1))
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (K, T), (1, H * K),
                                (i_k * BK, i_t * BT), (BK, BT), (0, 1))
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1))
        b_do = tl.load(p_do, boundary_check=(0, 1))
        if HAS_G:
            b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
            b_dh *= tl.exp(g_last)
            b_q = (b_q * (tl.exp(b_g) * scale)[None, :]).to(b_do.dtype)  # (Q ⊙ e^G)^T scale
        else:
            b_q = (b_q * scale).to(b_do.dtype)
        b_dh += tl.dot(b_q, b_do, input_precision=PREC)
    if STORE_DH0:
        p_dh0 = tl.make_block_ptr(dh0 + i_nh.to(tl.int64) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_dh0, b_dh.to(p_dh0.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _bwd_dqkv_kernel(
    q, k, v, gc, h, do, dh, dq, dk, dv, dg, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """dq, dk, dv of one chunk (all of K at once, V in blocks), and the decay's gradient dg per
    token when there is a decay (directly: see the module docstring); grid (chunks, H)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1))
    b_k = tl.load(p_k, boundary_check=(0, 1))
    idx = tl.arange(0, BT)
    causal = idx[:, None] >= idx[None, :]
    causal_t = idx[:, None] <= idx[None, :]  # D^T: row j, column i >= j
    if HAS_G:
        b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
        b_D = tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], float("-inf"))) * scale
        b_Dt = tl.exp(tl.where(causal_t, b_g[None, :] - b_g[:, None], float("-inf"))) * scale
        b_kd = (b_k * tl.exp(g_last - b_g)[:, None]).to(b_k.dtype)  # K ⊙ e^{G_last - G}
    else:
        b_D = causal.to(ACC) * scale
        b_Dt = causal_t.to(ACC) * scale
        b_kd = b_k
    # Transposes are computed as their own products, never by tl.trans of a dot's result (Triton
    # 3.4 - 3.7.0 miscompiles that on Hopper: flash-linear-attention issue #640).
    b_At = tl.dot(b_k, tl.trans(b_q), input_precision=PREC) * b_Dt  # the forward's scores, transposed
    b_dq = tl.zeros([BT, BK], dtype=ACC)  # dO S_n^T (inter-chunk part of dq, before e^G scale)
    b_dk = tl.zeros([BT, BK], dtype=ACC)  # V dH^T (inter-chunk part of dk, before e^{G_last - G})
    b_dA = tl.zeros([BT, BT], dtype=ACC)  # dO V^T
    b_dAt = tl.zeros([BT, BT], dtype=ACC)  # V dO^T
    b_SdS = tl.zeros([BV], dtype=ACC)  # <S_n, dH_{n+1}> by value columns (for dg)
    for i_v in range(tl.cdiv(V, BV)):
        p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_h = tl.make_block_ptr(h + (i_c * H + i_h).to(tl.int64) * K * V, (V, K), (1, V),
                                (i_v * BV, 0), (BV, BK), (0, 1))  # S_n^T
        p_dh = tl.make_block_ptr(dh + (i_c * H + i_h).to(tl.int64) * K * V, (K, V), (V, 1),
                                 (0, i_v * BV), (BK, BV), (1, 0))  # dH_{n+1}
        p_dht = tl.make_block_ptr(dh + (i_c * H + i_h).to(tl.int64) * K * V, (V, K), (1, V),
                                  (i_v * BV, 0), (BV, BK), (0, 1))  # dH_{n+1}^T
        b_v = tl.load(p_v, boundary_check=(0, 1))
        b_do = tl.load(p_do, boundary_check=(0, 1))
        b_h = tl.load(p_h, boundary_check=(0, 1))
        b_dh = tl.load(p_dh, boundary_check=(0, 1))
        b_dht = tl.load(p_dht, boundary_check=(0, 1))
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_dAt += tl.dot(b_v, tl.trans(b_do), input_precision=PREC)
        b_dq += tl.dot(b_do, b_h.to(b_do.dtype), input_precision=PREC)
        b_dk += tl.dot(b_v, b_dht.to(b_v.dtype), input_precision=PREC)
        b_dv = tl.dot(b_At.to(b_do.dtype), b_do, input_precision=PREC)
        b_dv += tl.dot(b_kd, b_dh.to(b_kd.dtype), input_precision=PREC)
        p_dv = tl.make_block_ptr(dv + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), boundary_check=(0, 1))
        if HAS_G:  # the states rounded as the dots above round them
            b_SdS += tl.sum(b_h.to(b_do.dtype).to(ACC) * b_dht.to(b_do.dtype).to(ACC), axis=1)
    b_dA = b_dA * b_D  # dL/d(q_i . k_j) for j <= i
    b_dAt = b_dAt * b_Dt  # the same, transposed
    if HAS_G:
        b_dq = b_dq * (tl.exp(b_g) * scale)[:, None]
        b_dk = b_dk * tl.exp(g_last - b_g)[:, None]
        # dg_i = e^{g_i} <S_{i-1}, dS_i>, every term with the decays between its tokens:
        #   sum_{t >= i} q_t . dq_t^inter + e^{G_last} <S_n, dH_{n+1}> + sum_{t >= i > j} P_tj
        #   + sum_{j < i} k_j . dk_j^inter,     P_tj = (q_t . k_j) dA_tj (the pairs straddling i)
        b_a = tl.sum(b_q.to(ACC) * b_dq, axis=1)
        b_e = tl.sum(b_k.to(ACC) * b_dk, axis=1)
        b_P = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * b_dA
        b_r = _direct_dg(b_a, b_e, _straddle_sum(b_P, causal), tl.exp(g_last) * tl.sum(b_SdS, axis=0))
        rows = i_t * BT + idx
        tl.store(dg + (bos + rows) * H + i_h, b_r, mask=rows < T)
    else:
        b_dq = b_dq * scale
    b_dq += tl.dot(b_dA.to(b_q.dtype), b_k, input_precision=PREC)
    b_dk += tl.dot(b_dAt.to(b_q.dtype), b_q, input_precision=PREC)
    p_dq = tl.make_block_ptr(dq + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_dk = tl.make_block_ptr(dk + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), boundary_check=(0, 1))
    tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), boundary_check=(0, 1))


# ---------------------------------------------------------------------------------------------
# host side


# Rows of one length (no cu_seqlens) are the common case. Their offsets and chunk layouts are
# built on the device from (B, T) and kept, so that no call reads an offset back to the host (a
# synchronisation per op call, i.e. per layer and step, that stalls the launch queue).
_UNIFORM_MAX = 64
_UNIFORM: dict[tuple[int, int, torch.device], Tensor] = {}  # (B, T, device) -> cu, oldest first
_UNIFORM_OF: dict[int, tuple[Tensor, int, int]] = {}  # id(cu) -> (cu, B, T) for the tensors above


def _uniform_cu(B: int, T: int, device: torch.device) -> Tensor:
    """``[0, T, 2T, ..., BT]`` (int32 on ``device``), one tensor per (B, T, device)."""
    key = (B, T, torch.device(device))
    cu = _UNIFORM.get(key)
    if cu is None:
        cu = torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=device) if T else \
            torch.zeros(B + 1, dtype=torch.int32, device=device)
        if stream_capturing():  # memory of a graph's pool: not kept past the capture
            return cu
        if len(_UNIFORM) >= _UNIFORM_MAX:
            old = _UNIFORM.pop(next(iter(_UNIFORM)))
            del _UNIFORM_OF[id(old)]
        _UNIFORM[key] = cu
        _UNIFORM_OF[id(cu)] = (cu, B, T)
    return cu


def uniform_rows(cu_seqlens: Tensor) -> tuple[int, int] | None:
    """(B, T) if ``cu_seqlens`` is the layout ``packed_sequences`` made for B rows of T tokens,
    else None (offsets given by the caller)."""
    hit = _UNIFORM_OF.get(id(cu_seqlens))
    return hit[1:] if hit is not None and hit[0] is cu_seqlens else None


def max_seqlen(cu_seqlens: Tensor) -> int:
    """The longest sequence's length (read back from the device only for given offsets)."""
    rows = uniform_rows(cu_seqlens)
    if rows is not None:
        return rows[1]
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0


@functools.lru_cache(maxsize=_UNIFORM_MAX)
def _uniform_layout(B: int, T: int, chunk_size: int, device: torch.device) -> tuple[Tensor, Tensor, int]:
    nc = -(-T // chunk_size)
    offsets = (torch.arange(B + 1, device=device) * nc).to(torch.int32)
    seq = torch.arange(B, device=device).repeat_interleave(nc)
    local = torch.arange(nc, device=device).repeat(B)
    return offsets, torch.stack([seq, local], dim=1).to(torch.int32).contiguous(), B * nc


def chunk_layout(cu_seqlens: Tensor, chunk_size: int) -> tuple[Tensor, Tensor, int]:
    """``chunk_offsets [N+1]`` (first chunk of each sequence) and ``chunk_indices [chunks, 2]``
    (sequence, chunk within it) as int32 on the device of ``cu_seqlens``, and the chunk count."""
    rows = uniform_rows(cu_seqlens)
    if rows is not None:  # while a graph is captured: built in its pool, not kept
        build = _uniform_layout.__wrapped__ if stream_capturing() else _uniform_layout
        return build(*rows, chunk_size, cu_seqlens.device)
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    per_seq = [-(-n // chunk_size) for n in lens]
    dev = cu_seqlens.device
    offsets = torch.tensor([0, *per_seq], device="cpu").cumsum(0).to(torch.int32)
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(per_seq, dtype=torch.long))
    local = torch.cat([torch.arange(n) for n in per_seq]) if per_seq else torch.zeros(0, dtype=torch.long)
    indices = torch.stack([seq, local], dim=1).to(torch.int32)
    return offsets.to(dev), indices.contiguous().to(dev), int(offsets[-1])


def _acc(dtype: torch.dtype) -> tuple[torch.dtype, object]:
    """The accumulation / state dtype (float32; float64 for float64 inputs) and its Triton type."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def grad_wanted(*tensors: Tensor | None) -> bool:
    """Whether autograd will want gradients of ``tensors`` (None entries skipped): grad mode on and
    one of them requiring grad. Else the kernels run their inference forward (nothing kept for a
    backward). Inside ``autograd.Function.forward`` ``needs_input_grad`` cannot tell: it stays True
    under ``torch.no_grad()``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the per-chunk states kept in memory between kernels (h, dh): the input's for
    half inputs, else the accumulation dtype. Every kernel rounds a loaded state to the input dtype
    before its tl.dot, so rounding it at the store instead gives the same results (the same RTNE
    rounding of the same fp32 value) with half the state traffic; the state passes still
    accumulate in fp32 and the final state stays fp32."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else _acc(dtype)[0]


def _stages(q: Tensor, h: Tensor, BK: int) -> int:
    """num_stages of the whole-K backward kernel: 3 for half inputs and states up to K = 128
    (135 KiB of shared memory), else 1 (fp32 at 3 stages needs 241 KiB; an H100 has 227)."""
    return 3 if q.element_size() == 2 and h.element_size() == 2 and BK <= 128 else 1


def _prec(dtype: torch.dtype) -> str:
    """tl.dot's precision for float32 inputs: TF32 only where torch allows it for matmuls."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _blocks(K: int, V: int) -> tuple[int, int, int]:
    """(BK for the whole-K kernels, BK and BV for the blocked ones)."""
    BKf = max(16, triton.next_power_of_2(K))
    return BKf, min(64, BKf), min(64, max(16, triton.next_power_of_2(V)))


def _state_tiles(K: int, V: int, kernel: str = "scalar_decay.fwd_h") -> dict:
    """Launch options of the state pass ``kernel`` over [BK, BV] tiles of S."""
    _, BK, BV = _blocks(K, V)
    # 32 x 32 state tiles: 4x the programs of 64 x 64 (256 at H = 16, K = V = 128, for 132 SMs);
    # the op's forward 0.113 -> 0.102 ms at T = 4k on an H100 (tune_kernels.py, 2026-12-07)
    return launch_options(kernel, num_warps=4, num_stages=3, BK=min(BK, 32), BV=min(BV, 32))


def _grouped_state_pass(k, v, gc, h, h0, ht, cu, goffsets, gindices, BT: int, GS: int) -> None:
    """The state at every group start into h (fp32) and the final state into ht, in two levels:
    each group's own part from a zero state, all groups at once (``_fwd_h_group_kernel``), then
    the groups in order (``_fwd_h_scan_kernel``)."""
    _, _, H, K = k.shape
    V = v.shape[-1]
    NG = h.shape[0]
    ACC = _acc(k.dtype)[1]
    hl = torch.empty_like(h)
    gtot = torch.empty(NG, H, dtype=h.dtype, device=k.device) if gc is not None else h
    # its own launch name (the per-chunk pass's defaults): 32 x 32 tiles (programs for a short
    # sequence) read each chunk's K and V V/BV and K/BK times, where a long one has programs to spare
    opts = _state_tiles(K, V, "scalar_decay.fwd_h_group")
    grid = (triton.cdiv(K, opts["BK"]), triton.cdiv(V, opts["BV"]))
    _fwd_h_group_kernel[(*grid, NG * H)](
        k, v, gc if gc is not None else k, hl, gtot, cu, gindices, GS, H=H, K=K, V=V, BT=BT,
        HAS_G=gc is not None, ACC=ACC, PREC=_prec(k.dtype), **opts,
    )
    _scan_groups(hl, gtot, h, h0, ht, goffsets, opts, gc is not None, "scalar_decay.fwd_h_scan")


def _scan_groups(hl: Tensor, gtot: Tensor, h: Tensor, h0: Tensor | None, ht: Tensor | None, goffsets: Tensor,
                 tiles: dict, has_g: bool, launch: str, per_key: bool = False) -> None:
    """The grouped state pass's second level (``_fwd_h_scan_kernel``): from each group's own part hl
    [groups, H, K, V] and log decay gtot ([groups, H]; per_key: [groups, H, K], GLA's), the state
    at every group start into h and the final state into ht (if given), over ``tiles``' BK x BV
    tiles; ``launch`` names its launch settings."""
    _, H, K, V = h.shape
    _fwd_h_scan_kernel[(triton.cdiv(K, tiles["BK"]), triton.cdiv(V, tiles["BV"]), (goffsets.numel() - 1) * H)](
        hl, gtot, h, h0 if h0 is not None else h, ht if ht is not None else h, goffsets, H=H, K=K, V=V,
        BK=tiles["BK"], BV=tiles["BV"], HAS_G=has_g, ACC=_acc(h.dtype)[1], USE_H0=h0 is not None,
        STORE_HT=ht is not None, GK=per_key, **launch_options(launch, num_warps=4, num_stages=2),
    )


def _forward(q, k, v, gc, scale, h0, want_ht, cu, offsets, indices, NC, BT):
    _, _, H, K = q.shape
    V = v.shape[-1]
    N = cu.numel() - 1
    _, BK, BV = _blocks(K, V)
    acc, ACC = _acc(q.dtype)
    h = q.new_empty(NC, H, K, V, dtype=_state_dtype(q.dtype))
    ht = q.new_empty(N, H, K, V, dtype=acc) if want_ht else None
    has_g = gc is not None
    opts = _state_tiles(K, V)
    _fwd_h_kernel[(triton.cdiv(K, opts["BK"]), triton.cdiv(V, opts["BV"]), N * H)](
        k, v, gc if has_g else q, h, h0 if h0 is not None else q, ht if want_ht else q, cu, offsets,
        H=H, K=K, V=V, BT=BT, HAS_G=has_g, ACC=ACC, PREC=_prec(q.dtype), USE_H0=h0 is not None,
        STORE_HT=want_ht, **opts,
    )
    o = torch.empty_like(v)
    _fwd_o_kernel[(triton.cdiv(V, BV), NC, H)](
        q, k, v, gc if has_g else q, h, o, cu, indices, scale,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_G=has_g, ACC=ACC, PREC=_prec(q.dtype),
        **launch_options("scalar_decay.fwd_o", num_warps=4, num_stages=3),
    )
    return o, h, ht


def _cumsum(g: Tensor, cu: Tensor, indices: Tensor, NC: int, BT: int) -> Tensor:
    """The chunk-local cumulative sums G of the log decays g [1, T, H] (fp32; float64 for float64)."""
    gc = torch.empty(g.shape, dtype=_acc(g.dtype)[0], device=g.device)
    _chunk_cumsum_kernel[(NC, g.shape[2])](g, gc, cu, indices, H=g.shape[2], BT=BT)
    return gc


# The grouped inference forward is the default where the sequence is long enough (below). Timed
# on an H100 against the per-chunk kernels (2026-12-07, session 15; B = 1, H = 16, K = V = 128,
# bf16; tune_kernels.py, ms): linear attention 4k / 16k / 64k GS 1: 0.086 / 0.303 / 1.172, GS 8:
# 0.085 / 0.299 / 1.134, GS 16: 0.090 / 0.268 / 1.032; simple GLA 16k / 64k GS 1: 0.367 / 1.436,
# GS 16: 0.303 / 1.125. GS 2 and 4 were slower than GS 1 at every length. Its GPU tests passed
# there (tests/ops/test_triton_kernels.py -k inference_forward, sessions 14 and 15).
GROUPED_BY_DEFAULT = True

# The state passes that take ``_pieces_out`` (this grouped forward, the delta rule's
# _delta_h_kernel, log-linear DeltaNet's level walk): the gate on Delta's rows once (True) or on
# each K^T piece (False, the way their GPU tests passed). On K^T it puts a [64, 64] multiply and
# a rounding on each step's critical path, and K^T goes through registers instead of straight
# from its pipelined load into the product: Gated DeltaNet's forward was 3.88 ms at 64k on an H100
# against DeltaNet's 2.92 (session 17), fla's 2.73 / 2.91. Exact in the interpreter either way.
# On an H100 (session 19, flag_ab.py) it took Gated DeltaNet's forward from 3.87 to 3.55 ms at 64k
# (0.98 -> 0.91 at 16k; forward + backward 18.05 -> 17.76) and the outputs and gradients agreed with
# the gate on K^T to 5e-3 in bf16, but it stays off: its Gated DeltaNet kernel tests ran only in
# float32 at K = 64 before the call's time ran out. (Log-linear DeltaNet's level walk with it failed
# its bf16 test at K = 128, V = 64; that walk now has its own flag,
# ``triton_log_linear_delta.LEVELS_GATE_ON_DELTA``, off.) Session 21 (H100): 3.92 -> 3.57 ms (GDN
# forward, 64k), simple GLA's grouped forward 1.13 -> 1.11, and the grouped forward's GPU tests with
# it pass; the GDN bf16 kernel tests still have not run (their `-k bfloat16` matched no test id).
GATE_ON_DELTA = False


def _chunks_per_group(NC: int, H: int, V: int, BV: int, device: torch.device) -> int:
    """Chunks per group of the inference forward: 16, else 8, where the output pass keeps at least
    one program per SM with that many (1 otherwise: the per-chunk kernels; GS 2 and 4 lost to them
    on an H100 at every length timed)."""
    if device.type != "cuda":
        return 1
    programs = NC * H * triton.cdiv(V, BV)
    for gs in (16, 8):
        if programs // gs >= torch.cuda.get_device_properties(device).multi_processor_count:
            return gs
    return 1


def _forward_grouped(q, k, v, gc, scale, h0, want_ht, cu, BT, GS, BV, opts):
    """The forward without the per-chunk states (no gradient wanted): the state at every GS-th
    chunk start only (fp32; ``_grouped_state_pass``), and an output pass that steps through each
    group's GS chunks from it, carrying S in registers. At GS = 16 the state traffic is 1/4 of the
    per-chunk bf16 states' (537 MB written and read at T = 64k, H = 16, K = V = 128, more than q, k,
    v and o together), and the longest sequential chain is GS chunks + T / (GS BT) groups instead
    of T / BT chunks."""
    _, _, H, K = q.shape
    V = v.shape[-1]
    acc, ACC = _acc(q.dtype)
    goffsets, gindices, NG = chunk_layout(cu, BT * GS)
    h = q.new_empty(NG, H, K, V, dtype=acc)
    ht = q.new_empty(cu.numel() - 1, H, K, V, dtype=acc) if want_ht else None
    has_g = gc is not None
    _grouped_state_pass(k, v, gc, h, h0, ht, cu, goffsets, gindices, BT, GS)
    o = torch.empty_like(v)
    _fwd_grouped_kernel[(triton.cdiv(V, BV), NG, H)](
        q, k, v, gc if has_g else q, h, o, cu, gindices, scale, GS,
        H=H, K=K, V=V, BT=BT, BP=min(64, max(16, triton.next_power_of_2(K))), BV=BV, HAS_G=has_g,
        ACC=ACC, PREC=_prec(q.dtype), GATE_D=GATE_ON_DELTA, **opts,
    )
    return o, ht


# The inference forward in one launch (``_fwd_lookback_kernel``) instead of the grouped forward's
# three (the groups' own parts, the scan over groups, the output pass): no state goes through memory
# but one per group, published for the later groups to find by look-back. Exact in the interpreter
# (float64 / float32 / bf16, packed sequences, initial and final states, walks of every length with
# INCLUSIVE off); not yet run on a GPU (its spin-waits and release / acquire flags are what the
# interpreter, running programs one by one, cannot test): off until its GPU tests pass and it is timed.
LOOKBACK_FORWARD = False
# tests only: False makes every look-back walk to its sequence's first group (``INCLUSIVE``)
LOOKBACK_INCLUSIVE = True


def _forward_lookback(q, k, v, gc, scale, h0, want_ht, cu, BT, GS, BV, opts):
    """``_forward_grouped``'s result from one launch of ``_fwd_lookback_kernel``."""
    _, _, H, K = q.shape
    V = v.shape[-1]
    acc, ACC = _acc(q.dtype)
    _, gindices, NG = chunk_layout(cu, BT * GS)
    NV = triton.cdiv(V, BV)
    agg = q.new_empty(NG, H, K, V, dtype=acc)
    inc = torch.empty_like(agg)
    dec = q.new_empty(NG * H * NV, dtype=acc)
    flags = torch.zeros(NG * H * NV + 1, dtype=torch.int32, device=q.device)  # the last: the ticket counter
    ht = q.new_empty(cu.numel() - 1, H, K, V, dtype=acc) if want_ht else None
    o = torch.empty_like(v)
    has_g = gc is not None
    _fwd_lookback_kernel[(NG * H * NV,)](
        q, k, v, gc if has_g else q, h0 if h0 is not None else q, ht if want_ht else q, o, agg, inc, dec, flags,
        cu, gindices, scale, GS, NV, H=H, K=K, V=V, BT=BT, BP=min(64, max(16, triton.next_power_of_2(K))), BV=BV,
        HAS_G=has_g, ACC=ACC, PREC=_prec(q.dtype), GATE_D=GATE_ON_DELTA, USE_H0=h0 is not None,
        STORE_HT=want_ht, INCLUSIVE=LOOKBACK_INCLUSIVE, **opts,
    )
    return o, ht


def _inference(q, k, v, g, h0, scale, want_ht, cu, BT):
    """``_ScalarDecayFn.forward`` when no gradient is wanted: the grouped forward where the
    sequence is long enough for groups of chunks (``_chunks_per_group``), else the same kernels."""
    H, K, V = q.shape[2], q.shape[3], v.shape[-1]
    offsets, indices, NC = chunk_layout(cu, BT)
    gc = _cumsum(g, cu, indices, NC, BT) if g is not None else None
    if LOOKBACK_FORWARD:  # 8 warps: no spills (4 warps, 2 stages: 76 B; ptxas, sm_90a, K = V = 128, bf16)
        opts = launch_options("scalar_decay.fwd_lookback", num_warps=8, num_stages=2, BV=_blocks(K, V)[2])
    else:
        opts = launch_options("scalar_decay.fwd_grouped", num_warps=4, num_stages=2, BV=_blocks(K, V)[2])
    BV = opts.pop("BV")
    GS = opts.pop("GS", None) or (_chunks_per_group(NC, H, V, BV, q.device) if GROUPED_BY_DEFAULT else 1)
    if GS > 1 and K <= 256:  # the output pass holds S as at most four pieces of 64 rows
        forward = _forward_lookback if LOOKBACK_FORWARD else _forward_grouped
        return forward(q, k, v, gc, scale, h0, want_ht, cu, BT, GS, BV, opts)
    o, _, ht = _forward(q, k, v, gc, scale, h0, want_ht, cu, offsets, indices, NC, BT)
    return o, ht


class _ScalarDecayFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, want_ht, cu, chunk_size):
        offsets, indices, NC = chunk_layout(cu, chunk_size)
        gc = _cumsum(g, cu, indices, NC, chunk_size) if g is not None else None
        o, h, ht = _forward(q, k, v, gc, scale, h0, want_ht, cu, offsets, indices, NC, chunk_size)
        ctx.save_for_backward(q, k, v, gc, h0, h, cu, offsets, indices)
        ctx.meta = (scale, chunk_size, NC, g is not None and g.requires_grad, g.dtype if g is not None else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, h0, h, cu, offsets, indices = ctx.saved_tensors
        scale, BT, NC, g_grad, g_dtype = ctx.meta
        _, _, H, K = q.shape
        V = v.shape[-1]
        N = cu.numel() - 1
        BKf, BK, BV = _blocks(K, V)
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        has_g = gc is not None
        acc, ACC = _acc(q.dtype)
        dh = q.new_empty(NC, H, K, V, dtype=h.dtype)
        dh0 = torch.empty(N, H, K, V, dtype=acc, device=q.device) if h0 is not None else None
        opts = launch_options("scalar_decay.bwd_dh", num_warps=4, num_stages=3, BK=BK, BV=BV)
        _bwd_dh_kernel[(triton.cdiv(K, opts["BK"]), triton.cdiv(V, opts["BV"]), N * H)](
            q, do, gc if has_g else q, dh, dht if dht is not None else q, dh0 if dh0 is not None else q,
            cu, offsets, scale, H=H, K=K, V=V, BT=BT, HAS_G=has_g, ACC=ACC, PREC=_prec(q.dtype),
            USE_DHT=dht is not None, STORE_DH0=dh0 is not None, **opts,
        )
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dg_acc = torch.empty(q.shape[:3], dtype=acc, device=q.device) if has_g else q
        _bwd_dqkv_kernel[(NC, H)](
            q, k, v, gc if has_g else q, h, do, dh, dq, dk, dv, dg_acc, cu, indices, scale,
            H=H, K=K, V=V, BT=BT, BK=BKf, BV=min(BV, 32), HAS_G=has_g, ACC=ACC, PREC=_prec(q.dtype),
            # 8 warps, 3 stages: fwd+bwd 1.185 -> 1.058 ms at T = 4k on an H100 (tune_kernels.py);
            # 1 stage where 3 would not fit shared memory (fp32 inputs or states: 241 KiB > 227 KiB)
            **launch_options("scalar_decay.bwd_dqkv", num_warps=8, num_stages=_stages(q, h, BKf)),
        )
        dg = None
        if g_grad:  # per token and directly (nothing to sum: the final state's seed is in dh)
            dg = dg_acc.to(g_dtype)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dq, dk, dv, dg, dh0, None, None, None, None


KERNEL_CHUNK = 64  # tokens per chunk in the kernels (a performance choice; results do not depend on it)


def packed_sequences(B: int, T: int, device: torch.device, cu_seqlens: Tensor | None = None):
    """The kernels' layout: every sequence packed into one row. Returns cu_seqlens (int32: the
    given offsets, B = 1, or the B rows of T tokens each) and the map of a [B, T, ...] tensor to
    [1, B*T, ...]."""
    if cu_seqlens is not None:
        cu = cu_seqlens.to(device=device, dtype=torch.int32)
    else:
        cu = _uniform_cu(B, T, device)
    return cu, lambda t: t.reshape(1, B * T, *t.shape[2:])


def scalar_decay_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None = None,
    *,
    scale: float = 1.0,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = KERNEL_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """Chunked scalar-decay linear attention on the GPU (inputs already checked by the caller).

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] log decay (<= 0) or None; scale: applied to
    q k^T; initial_state: [N, H, K, V] (N sequences); cu_seqlens: [N+1] int offsets into T for
    packed variable lengths (B must be 1) or None. Returns o [B, T, H, V] (q's dtype) and the
    final state [N, H, K, V] (float32) or None. fp32 accumulation and final state for half inputs;
    the per-chunk states between kernels in the input dtype (``_state_dtype``).
    """
    B, T, H, _ = q.shape
    cu, flat = packed_sequences(B, T, q.device, cu_seqlens)
    q, k, v = (flat(t).contiguous() for t in (q, k, v))
    if g is not None:
        g = flat(g).contiguous()
    h0 = initial_state.contiguous() if initial_state is not None else None
    if grad_wanted(q, k, v, g, h0):
        o, ht = _ScalarDecayFn.apply(q, k, v, g, h0, float(scale), output_final_state, cu, chunk_size)
    else:  # no per-chunk states to keep for a backward pass
        o, ht = _inference(q, k, v, g, h0, float(scale), output_final_state, cu, chunk_size)
    return o.reshape(B, T, H, v.shape[-1]), ht

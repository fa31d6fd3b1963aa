"""Triton kernels of chunked log-linear attention over a scalar-decay base (log-linear Mamba-2).

Log-linear attention (Guo et al. 2025, §3.3; derivation in ``ops/log_linear/README.md``) over
``S_t = exp(g_t) S_{t-1} + k_t v_t^T`` (Mamba-2's SSD: q = C, k = B, v = dt x, g = dt A). Chunks of
C = 2^c tokens, chunk-local cumulative log-gates ``G_i`` (<= 0), ``D_ij = exp(G_i - G_j) [i >= j]``:

    O_[n] = (Q K^T ⊙ D ⊙ Λ) V  +  e^G ⊙ sum_m λ^(c+m) ⊙ (Q Z^(m)_n)
    Λ_ij  = λ_i^(bit_length(i XOR j))                      (intra-chunk Fenwick level)
    Z^(m)_{n+1} = e^{G_last,n} [n mod 2^m != 0] Z^(m)_n + [bit m-1 of n = 0] U_n
    U_n   = (K ⊙ e^{G_last - G})^T V                        (chunk n's sources at its end)

and ``Z^(m)_n`` is read by chunk n only when bit m-1 of n is 1. The chunk levels m = 1..M are
independent recurrences over chunks. The training forward runs them in parallel, one walk over
every chunk per level (grid K/BK x V/BV x sequences*H*M), and keeps every Z^(m)_n for the backward.

The inference forward keeps fewer: a reader chunk n of a level's block adds nothing,
so Z^(m)_n = e^{Gc_n - Gc_b} Z^(m)_b from the block's first reader b, and b = (2j + 1) 2^(m-1) is
the first reader of exactly one level, m = ctz(b) + 1: one state per chunk. Without
``GROUPED_LEVELS`` the M walks store only those; with it, none walks: Z^(m)_b is the sum over the block's first
half (2^(m-1) chunks ending at b), a range sum, so every chunk's one state comes from sums over
aligned ranges: inside groups of GS chunks all at once (the levels with blocks of up to GS chunks,
each group one program walking its GS chunks with those levels' states in registers), then the
same walk over each sequence's groups with each group's sum and decay as one step (the levels
above): about N states stored and T / (GS C) sequential steps, instead of M walks of T / C steps.

Kernels: ``_fwd_z_kernel`` (every level state entering every chunk, [chunks, H, M, K, V]),
``_fwd_z_group_kernel`` and ``_fwd_z_top_kernel`` (``GROUPED_LEVELS``: [chunks, H, K, V]),
``_fwd_o_kernel`` (output, grid V/BV x chunks x H), ``_bwd_dz_kernel`` (reverse pass per level;
``GROUPED_LEVELS``: ``_bwd_dz_compact_kernel`` and ``_bwd_dh_gather_kernel``), ``_bwd_dqkv_kernel``
(dq, dk, dv, dλ and the decay's gradient per token, grid chunks x H).

Backward (derived here). With dZread_n = (Q ⊙ e^G ⊙ λ^(c+m))^T dO_[n] for a chunk that reads
level m (zero otherwise), the gradient D^(m)_n of the state entering chunk n runs backwards:
    D^(m)_n = dZread_n + e^{G_last,n} [n mod 2^m != 0] D^(m)_{n+1}
and chunk n's sources get dH_n = sum_m [bit m-1 of n = 0] D^(m)_{n+1}, used exactly like the
base's dH_{n+1}: dV += (K ⊙ e^{G_last - G}) dH_n, dK += (V dH_n^T) ⊙ e^{G_last - G}. With
dP = dO V^T (intra) and X_m = dO Z^(m)_n^T:
    dq = (dP ⊙ D ⊙ Λ) K + e^G ⊙ sum_m λ^(c+m) ⊙ X_m,        dk = (dP ⊙ D ⊙ Λ)^T Q + inter
    dv = (Q K^T ⊙ D ⊙ Λ)^T dO + inter
    dλ_i^(l) = sum_{j: lev(i,j) = l} (Q K^T ⊙ D)_ij dP_ij   (l <= c),
    dλ_i^(c+m) = e^{G_i} q_i . X_m,i
The decay's gradient per token is taken directly, from the terms whose decay spans g_s (the
chunk's level reads after s, its sources before s, the pairs straddling s, and the levels' state
carried through the chunk, [n mod 2^m != 0] e^{G_last} <Z^(m)_n, D^(m)_{n+1}>; ``_bwd_dqkv_kernel``),
so z keeps every Z^(m)_n, read or not. The identity dg_s = sum_{t >= s} (q_t . dq_t - k_t . dk_t)
is the same in exact arithmetic, but its terms cancel down to dg's size: float32 dA 1.3e-4 with
harsh decays against 9e-6 directly (interpreter, T = 71, chunks of 16).

Hopper: transposes are their own products, never ``tl.trans`` of a dot result (see
``triton_scalar_decay``).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from longctx.ops.common.triton_launch import launch_options
from longctx.ops.common.triton_scalar_decay import (
    _acc,
    _blocks,
    _chunk,
    _chunk_cumsum_kernel,
    _direct_dg,
    _kt_v,
    _load_g,
    _prec,
    _sequence,
    _state_dtype,
    _straddle_sum,
    chunk_layout,
    grad_wanted,
    max_seqlen,
    packed_sequences,
    uniform_rows,
)


@triton.jit
def _lam_col(lam, bos, T, i_t, i_h, col, H: tl.constexpr, L: tl.constexpr, BT: tl.constexpr):
    """λ^(col) of the chunk's rows [BT] (zero past the end and for col >= L)."""
    rows = i_t * BT + tl.arange(0, BT)
    cols = tl.zeros([BT], dtype=tl.int32) + col
    return tl.load(lam + ((bos + rows) * H + i_h) * L + cols, mask=(rows < T) & (cols < L), other=0.0)


@triton.jit
def _store_col(dlam, bos, T, i_t, i_h, col, x, H: tl.constexpr, L: tl.constexpr, BT: tl.constexpr):
    """dλ^(col) of the chunk's rows (nothing for col >= L)."""
    rows = i_t * BT + tl.arange(0, BT)
    cols = tl.zeros([BT], dtype=tl.int32) + col
    tl.store(dlam + ((bos + rows) * H + i_h) * L + cols, x, mask=(rows < T) & (cols < L))


@triton.jit
def _level_select(l: tl.constexpr, BT: tl.constexpr):
    """[BT, BT] mask of the pairs (i, j) of a chunk at Fenwick level l = bit_length(i XOR j)."""
    idx = tl.arange(0, BT)
    x = idx[:, None] ^ idx[None, :]
    if l == 0:
        sel = x == 0
    else:
        sel = (x >= (1 << (l - 1))) & (x < (1 << l))
    return sel


@triton.jit
def _level_weights(lam, bos, T, i_t, i_h, H: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
                   LOG2C: tl.constexpr, ACC: tl.constexpr, TRANS: tl.constexpr):
    """Λ_ij = λ_i^(bit_length(i XOR j)) [BT, BT], or its transpose Λ^T_ji when TRANS."""
    b_L = tl.zeros([BT, BT], dtype=ACC)
    for l in tl.static_range(LOG2C + 1):
        sel = _level_select(l, BT)
        b_l = _lam_col(lam, bos, T, i_t, i_h, l, H, L, BT).to(ACC)
        if TRANS:
            b_L += tl.where(sel, b_l[None, :], 0.0)
        else:
            b_L += tl.where(sel, b_l[:, None], 0.0)
    return b_L


@triton.jit
def _level_program(cu_seqlens, chunk_offsets, M, H: tl.constexpr, BT: tl.constexpr):
    """A level walk's program (grid K/BK x V/BV x sequences * H * M): its key and value blocks, its
    level i_m = m - 1 and head, and its sequence's first token, length, chunks and first chunk."""
    i_k, i_v, i_nhm = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_m, i_nh = i_nhm % M, i_nhm // M
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    return i_k, i_v, i_m, i_h, bos, T, NT, boh


@triton.jit
def _level_role(i_t, i_m):
    """Chunk i_t of a sequence at level m = i_m + 1: whether it reads the level (bit m-1 of i_t set;
    else it feeds it) and whether the level's state carries into it (i_t mod 2^m != 0; else a block
    of the level starts there and the state is reset)."""
    return (i_t >> i_m) & 1, ((i_t >> (i_m + 1)) << (i_m + 1)) != i_t


@triton.jit
def _walk_segment(segments, i_sh, H: tl.constexpr):
    """Program i_sh = segment * H + head of a level walk over ``walk_segments``' table: the head, the
    sequence, the level's index i_m (level c + i_m + 1) and the segment's chunks [t0, t1)."""
    i_g, i_h = i_sh // H, i_sh % H
    i_n = tl.load(segments + i_g * 4)
    i_m = tl.load(segments + i_g * 4 + 1)
    t0 = tl.load(segments + i_g * 4 + 2)
    return i_h, i_n, i_m, t0, t0 + tl.load(segments + i_g * 4 + 3)


@triton.jit
def _first_reader(gcc, i_c, i_t, i_m, i_h, H: tl.constexpr, ACC: tl.constexpr):
    """Global chunk i_c (i_t in its sequence), a reader of level m = i_m + 1: the global chunk of its
    block's first reader b (bits below m-1 of i_t cleared) and the decay from b to it,
    e^{Gc_n - Gc_b} (gcc: float64 [chunks, H])."""
    i_z = i_c - (i_t & ((1 << i_m) - 1))
    return i_z, tl.exp((tl.load(gcc + i_c * H + i_h) - tl.load(gcc + i_z * H + i_h)).to(ACC))


@triton.jit
def _fwd_z_kernel(
    k, v, gc, z, cu_seqlens, chunk_offsets, M,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, STORE_ALL: tl.constexpr,
):
    """Z^(m) entering every chunk into z [chunks, H, M, K, V]; grid (K/BK, V/BV, sequences * H * M),
    one chunk level per program. STORE_ALL: also where the chunk does not read it (the training
    forward: the decay gradient's carry term needs it); else only at the first chunk b of each
    block that reads it (the inference forward without ``GROUPED_LEVELS``)."""
    i_k, i_v, i_m, i_h, bos, T, NT, boh = _level_program(cu_seqlens, chunk_offsets, M, H, BT)
    b_z = tl.zeros([BK, BV], dtype=ACC)
    for i_t in range(NT):
        rd, keep = _level_role(i_t, i_m)
        if STORE_ALL or (i_t & ((2 << i_m) - 1)) == (1 << i_m):  # (else: the block's first reader)
            p_z = tl.make_block_ptr(z + (((boh + i_t) * H + i_h) * M + i_m) * K * V, (K, V), (V, 1),
                                    (i_k * BK, i_v * BV), (BK, BV), (1, 0))
            tl.store(p_z, b_z.to(p_z.dtype.element_ty), boundary_check=(0, 1))
        b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
        b_z = tl.where(keep, b_z * tl.exp(g_last), 0.0)
        if rd == 0:  # only the chunks that feed the level read k and v (half of them)
            b_k, b_v = _kt_v(k, v, bos, T, i_t, i_h, i_k, i_v, H, K, V, BT, BK, BV)
            b_v = (b_v * tl.exp(g_last - b_g)[:, None]).to(b_k.dtype)  # V ⊙ e^{G_last - G}
            b_z += tl.dot(b_k, b_v, input_precision=PREC)  # U_n


@triton.jit
def _level_step(b_z, b_u, a, r, MP: tl.constexpr):
    """Step r >= 0 of level states b_z [MP, BK, BV] (level m = 1..MP at index m - 1, each summed
    from zero over the feeding steps of its blocks of 2^m steps): returns the state of level
    ctz(r) + 1 entering step r, i.e. at its block's first reader (zero for r = 0), and the states
    entering r + 1: decayed by a, reset at a block start, plus step r's contribution b_u
    [BK, BV] where r feeds the level (bit m - 1 of r is 0)."""
    lv = tl.arange(0, MP)
    low = r & ((2 << lv) - 1)  # r mod 2^m
    b_first = tl.sum(tl.where((low == (1 << lv))[:, None, None], b_z, 0.0), axis=0)
    b_z = tl.where((low == 0)[:, None, None], 0.0, b_z * a)
    return b_first, b_z + tl.where((((r >> lv) & 1) == 0)[:, None, None], b_u[None, :, :], 0.0)


@triton.jit
def _fwd_z_group_kernel(
    k, v, gc, z, zg, ag, cu_seqlens, chunk_offsets, group_indices,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, GS: tl.constexpr,
    LP: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """The inference forward's chunk levels m = 1..log2(GS), whose blocks lie inside one group of GS
    chunks: Z^(m) at every chunk n of the group but its first, for m = ctz(n) + 1 (n is the first
    reader of that level's block; the block's later readers decay it from there), into z [chunks,
    H, K, V]; and the group's own contribution decayed to its end, sum_n e^{...} U_n, into zg
    [groups, H, K, V] (fp32) with its log decay into ag [groups, H]; grid (K/BK, V/BV, groups * H).
    LP: log2(GS) rounded up to a power of two (the level tile's rows)."""
    i_k, i_v, i_gh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_g, i_h = i_gh // H, i_gh % H
    i_n = tl.load(group_indices + i_g * 2)
    i_s = tl.load(group_indices + i_g * 2 + 1)
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    b_z = tl.zeros([LP, BK, BV], dtype=ACC)
    b_tot = tl.zeros([BK, BV], dtype=ACC)
    a_tot = tl.zeros([1], dtype=ACC)
    for r in range(tl.minimum(GS, NT - i_s * GS)):
        i_t = i_s * GS + r
        b_k, b_v = _kt_v(k, v, bos, T, i_t, i_h, i_k, i_v, H, K, V, BT, BK, BV)
        b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
        b_v = (b_v * tl.exp(g_last - b_g)[:, None]).to(b_k.dtype)  # V ⊙ e^{G_last - G}
        b_u = tl.dot(b_k, b_v, input_precision=PREC)  # U_n
        b_first, b_z = _level_step(b_z, b_u, tl.exp(g_last), r, LP)
        if r > 0:
            p_z = tl.make_block_ptr(z + ((boh + i_t) * H + i_h) * K * V, (K, V), (V, 1),
                                    (i_k * BK, i_v * BV), (BK, BV), (1, 0))
            tl.store(p_z, b_first.to(p_z.dtype.element_ty), boundary_check=(0, 1))
        b_tot = b_tot * tl.exp(g_last) + b_u
        a_tot += g_last
    p_t = tl.make_block_ptr(zg + (i_g * H + i_h).to(tl.int64) * K * V, (K, V), (V, 1),
                            (i_k * BK, i_v * BV), (BK, BV), (1, 0))
    tl.store(p_t, b_tot.to(p_t.dtype.element_ty), boundary_check=(0, 1))
    tl.store(ag + i_g * H + i_h + tl.arange(0, 1), a_tot)


@triton.jit
def _fwd_z_top_kernel(
    zg, ag, z, cu_seqlens, chunk_offsets, group_offsets,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, GS: tl.constexpr,
    MP: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr,
):
    """The inference forward's chunk levels above log2(GS): the same level walk over the groups of
    a sequence with each group's sum and decay (``_fwd_z_group_kernel``) as one step, Z^(m) at
    the first chunk of every group but the first, into z; grid (K/BK, V/BV, sequences * H)."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    _, _, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    bog = tl.load(group_offsets + i_n).to(tl.int64)
    b_z = tl.zeros([MP, BK, BV], dtype=ACC)
    for i_s in range(tl.cdiv(NT, GS)):
        p_t = tl.make_block_ptr(zg + ((bog + i_s) * H + i_h) * K * V, (K, V), (V, 1),
                                (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        b_u = tl.load(p_t, boundary_check=(0, 1)).to(ACC)
        b_first, b_z = _level_step(b_z, b_u, tl.exp(tl.load(ag + (bog + i_s) * H + i_h).to(ACC)), i_s, MP)
        if i_s > 0:
            p_z = tl.make_block_ptr(z + ((boh + i_s * GS) * H + i_h) * K * V, (K, V), (V, 1),
                                    (i_k * BK, i_v * BV), (BK, BV), (1, 0))
            tl.store(p_z, b_first.to(p_z.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _fwd_o_kernel(
    q, k, v, gc, lam, z, gcc, o, cu_seqlens, chunk_indices, M, MZ,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
    LOG2C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    FIRST: tl.constexpr,
):
    """O_[n] = (Q K^T ⊙ D ⊙ Λ) V + e^G ⊙ sum_m λ^(c+m) ⊙ (Q Z^(m)_n); grid (V/BV, chunks, H).
    z: [chunks, H, MZ, K, V], MZ = M: level m at index m - 1; MZ = 1: chunk b holds only the level
    it is the first reader of, m = ctz(b) + 1 (``_grouped_levels``). FIRST: z holds a level
    only at each block's first reader b (not every chunk), and
    Z^(m)_n = e^{Gc_n - Gc_b} Z^(m)_b with gcc [chunks, H] (float64) = Gc, the log decay of the
    sequence's chunks before chunk n."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    # the levels inside the chunk first, so the scores are dead before the level products (fewer
    # live [BT, BT] / [BT, BV] tiles; ptxas, sm_90a, K = V = 128, bf16: 255 -> 223 registers at 4
    # warps 3 stages, 151 -> 105 at 8 warps, two programs per SM there; untimed)
    b_A = tl.zeros([BT, BT], dtype=ACC)
    for i_k in range(tl.cdiv(K, BK)):
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (K, T), (1, H * K),
                                (i_k * BK, i_t * BT), (BK, BT), (0, 1))
        b_A += tl.dot(tl.load(p_q, boundary_check=(0, 1)), tl.load(p_k, boundary_check=(0, 1)),
                      input_precision=PREC)
    b_g, _ = _load_g(gc, bos, T, i_t, i_h, H, BT)
    idx = tl.arange(0, BT)
    causal = idx[:, None] >= idx[None, :]
    b_L = _level_weights(lam, bos, T, i_t, i_h, H, L, BT, LOG2C, ACC, False)
    b_A *= tl.where(causal, tl.exp(b_g[:, None] - b_g[None, :]), 0.0) * b_L
    p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1),
                            (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    b_v = tl.load(p_v, boundary_check=(0, 1))
    b_o = tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)
    b_eg = tl.exp(b_g)
    for i_m in range(M):  # the chunk levels; chunk n reads level m where bit m-1 of n is 1, only those
        if ((i_t >> i_m) & 1) == 1:
            i_z, dec = i_c, 1.0  # the chunk whose z entry holds the state, and its decay to this one
            if FIRST:  # the block's first reader b, and e^{Gc_n - Gc_b} <= 1
                i_z, dec = _first_reader(gcc, i_c, i_t, i_m, i_h, H, ACC)
            z_m = z + ((i_z * H + i_h) * MZ + i_m % MZ).to(tl.int64) * K * V
            b_r = tl.zeros([BT, BV], dtype=ACC)
            for i_k in range(tl.cdiv(K, BK)):
                p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                        (i_t * BT, i_k * BK), (BT, BK), (1, 0))
                p_z = tl.make_block_ptr(z_m, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
                b_q = tl.load(p_q, boundary_check=(0, 1))
                b_r += tl.dot(b_q, tl.load(p_z, boundary_check=(0, 1)).to(b_q.dtype), input_precision=PREC)
            b_w = _lam_col(lam, bos, T, i_t, i_h, LOG2C + 1 + i_m, H, L, BT).to(ACC) * b_eg * dec
            b_o += b_w[:, None] * b_r  # e^G λ^(c+m) ⊙ (Q Z^(m)_n)
    p_o = tl.make_block_ptr(o + (bos * H + i_h) * V, (T, V), (H * V, 1),
                            (i_t * BT, i_v * BV), (BT, BV), (1, 0))
    tl.store(p_o, b_o.to(p_o.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _bwd_dz_kernel(
    q, do, gc, lam, z, e, carry, cu_seqlens, chunk_offsets, M,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
    LOG2C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """Reverse pass of one chunk level: e[n, m] = [bit m-1 of n = 0] D^(m)_{n+1} (the gradient
    that level m sends to chunk n's sources) and this (K, V) block's share of the carry term
    [n mod 2^m != 0] e^{G_last,n} <Z^(m)_n, D^(m)_{n+1}> (the gradient of G_last,n through the
    level's decay, into carry [chunks, H, M, K/BK, V/BV]); grid (K/BK, V/BV, sequences * H * M)."""
    i_k, i_v, i_m, i_h, bos, T, NT, boh = _level_program(cu_seqlens, chunk_offsets, M, H, BT)
    b_d = tl.zeros([BK, BV], dtype=ACC)  # D^(m)_{n+1}
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        rd, keep = _level_role(i_t, i_m)
        p_e = tl.make_block_ptr(e + (((boh + i_t) * H + i_h) * M + i_m) * K * V, (K, V), (V, 1),
                                (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_e, tl.where(rd == 0, b_d, 0.0).to(p_e.dtype.element_ty), boundary_check=(0, 1))
        p_z = tl.make_block_ptr(z + (((boh + i_t) * H + i_h) * M + i_m) * K * V, (K, V), (V, 1),
                                (i_k * BK, i_v * BV), (BK, BV), (1, 0))
        b_zd = tl.sum(tl.sum(tl.load(p_z, boundary_check=(0, 1), padding_option="zero") * b_d, axis=1), axis=0)
        p_c = carry + ((((boh + i_t) * H + i_h) * M + i_m) * tl.num_programs(0) + i_k) * tl.num_programs(1) + i_v
        p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (K, T), (1, H * K),
                                (i_k * BK, i_t * BT), (BK, BT), (0, 1))
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_q = tl.load(p_q, boundary_check=(0, 1))
        b_do = tl.load(p_do, boundary_check=(0, 1))
        b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
        tl.store(p_c, tl.where(keep, tl.exp(g_last) * b_zd, 0.0))
        b_w = _lam_col(lam, bos, T, i_t, i_h, LOG2C + 1 + i_m, H, L, BT).to(ACC) * tl.exp(b_g)
        b_q = (b_q * b_w[None, :]).to(b_do.dtype)  # (Q ⊙ e^G ⊙ λ^(c+m))^T
        b_dz = tl.dot(b_q, b_do, input_precision=PREC)
        b_d = tl.where(keep, b_d * tl.exp(g_last), 0.0) + tl.where(rd == 1, b_dz, 0.0)


@triton.jit
def _bwd_dz_compact_kernel(
    q, k, v, do, gc, lam, z, gcc, r, cz, cu_seqlens, chunk_offsets, segments, M,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
    LOG2C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """The reverse pass of one chunk level over the compact states (``GROUPED_LEVELS``: z [chunks,
    H, K, V] holds Z^(m)_b at each block's first reader b only). D^(m) runs backwards as in
    ``_bwd_dz_kernel``; instead of every D^(m)_{n+1} it stores R^(m)_b = D^(m)_b at the first reader
    b (into r [chunks, H, K, V]: the block's source chunks n get D^(m)_{n+1} = e^{Gc_b - Gc_{n+1}}
    R^(m)_b, ``_bwd_dh_gather_kernel``), and per chunk one scalar of the carry term, into cz
    [chunks, H, M, K/BK, V/BV] (this block's share): at a reader n, c_n = <Z^(m)_n, dZread_n>
    (Z^(m)_n = e^{Gc_n - Gc_b} Z^(m)_b); at a source n, u_n = <U_n, D^(m)_{n+1}>. The carry of chunk
    n is the sum of the c after it in its reader half, or of the u before it in its source half
    (``_carry_from_scalars``). One program per segment of whole blocks of its level
    (``walk_segments``): grid (K/BK, V/BV, segments * H)."""
    i_k, i_v = tl.program_id(0), tl.program_id(1)
    i_h, i_n, i_m, t0, t1 = _walk_segment(segments, tl.program_id(2), H)
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    t1 = tl.minimum(t1, NT)
    b_d = tl.zeros([BK, BV], dtype=ACC)  # D^(m)_{n+1} (0 past a block's end: never read there)
    for i_r in range(t1 - t0):
        i_t = t1 - 1 - i_r
        i_c = boh + i_t
        rd, keep = _level_role(i_t, i_m)
        b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
        b_dz = tl.zeros([BK, BV], dtype=ACC)
        if rd == 1:  # dZread_n and c_n = <Z^(m)_n, dZread_n>
            p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (K, T), (1, H * K),
                                    (i_k * BK, i_t * BT), (BK, BT), (0, 1))
            p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                     (i_t * BT, i_v * BV), (BT, BV), (1, 0))
            b_do = tl.load(p_do, boundary_check=(0, 1))
            b_w = _lam_col(lam, bos, T, i_t, i_h, LOG2C + 1 + i_m, H, L, BT).to(ACC) * tl.exp(b_g)
            b_q = (tl.load(p_q, boundary_check=(0, 1)) * b_w[None, :]).to(b_do.dtype)  # (Q ⊙ e^G ⊙ λ)^T
            b_dz = tl.dot(b_q, b_do, input_precision=PREC)
            i_z, dec = _first_reader(gcc, i_c, i_t, i_m, i_h, H, ACC)
            p_z = tl.make_block_ptr(z + (i_z * H + i_h) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
            b_val = tl.sum(tl.sum(tl.load(p_z, boundary_check=(0, 1)).to(ACC) * b_dz, axis=1), axis=0) * dec
        else:  # u_n = <U_n, D^(m)_{n+1}>, U_n = (K ⊙ e^{G_last - G})^T V
            b_kt, b_v = _kt_v(k, v, bos, T, i_t, i_h, i_k, i_v, H, K, V, BT, BK, BV)
            b_v = (b_v * tl.exp(g_last - b_g)[:, None]).to(b_kt.dtype)
            b_val = tl.sum(tl.sum(tl.dot(b_kt, b_v, input_precision=PREC) * b_d, axis=1), axis=0)
        p_c = cz + (((i_c * H + i_h) * M + i_m) * tl.num_programs(0) + i_k) * tl.num_programs(1) + i_v
        tl.store(p_c, b_val)
        b_d = tl.where(keep, b_d * tl.exp(g_last), 0.0) + b_dz
        if rd == 1 and (i_t & ((1 << i_m) - 1)) == 0:  # the first reader b: R^(m)_b = D^(m)_b
            p_r = tl.make_block_ptr(r + (i_c * H + i_h) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
            tl.store(p_r, b_d.to(p_r.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _bwd_dh_gather_kernel(
    gc, gcc, r, dh, cu_seqlens, chunk_indices, chunk_offsets, M,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr,
):
    """dH_n = sum_m [bit m-1 of n = 0] D^(m)_{n+1} = sum_m e^{Gc_b - Gc_n - G_last,n} R^(m)_b over
    the levels chunk n feeds whose block has a reader (b, its first, inside the sequence), into dh
    [chunks, H, K, V]; grid (K/BK, V/BV, chunks * H)."""
    i_k, i_v, i_ch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_c, i_h = (i_ch // H).to(tl.int64), i_ch % H
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    NT = tl.cdiv(T, BT)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    boh = tl.load(chunk_offsets + i_n).to(tl.int64)
    _, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
    gc_n = tl.load(gcc + i_c * H + i_h) + g_last  # Gc_{n+1}, float64
    b_dh = tl.zeros([BK, BV], dtype=ACC)
    for i_m in range(M):
        b = ((i_t >> (i_m + 1)) << (i_m + 1)) + (1 << i_m)  # the first reader of n's block
        if ((i_t >> i_m) & 1) == 0 and b < NT:
            p_r = tl.make_block_ptr(r + ((boh + b) * H + i_h) * K * V, (K, V), (V, 1),
                                    (i_k * BK, i_v * BV), (BK, BV), (1, 0))
            dec = tl.exp((tl.load(gcc + (boh + b) * H + i_h) - gc_n).to(ACC))
            b_dh += tl.load(p_r, boundary_check=(0, 1)).to(ACC) * dec
    p_dh = tl.make_block_ptr(dh + (i_c * H + i_h) * K * V, (K, V), (V, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))
    tl.store(p_dh, b_dh.to(p_dh.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _level_read(b_dq, b_q, b_w, z_m, do, lam, dlam, bos, T, i_t, i_h, col, H: tl.constexpr, K: tl.constexpr,
                V: tl.constexpr, L: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                ACC: tl.constexpr, PREC: tl.constexpr):
    """One chunk level's read in the backward: X = dO Z^T (Z = the state at z_m [K, V]) scaled per
    row by b_w [BT] (e^G, the level's decay, or 0 where the row does not read it); stores
    dλ^(col) = q . X and returns b_dq + λ^(col) X."""
    b_x = tl.zeros([BT, BK], dtype=ACC)
    for i_v in range(tl.cdiv(V, BV)):
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_zt = tl.make_block_ptr(z_m, (V, K), (1, V), (i_v * BV, 0), (BV, BK), (0, 1))  # Z^T
        b_do = tl.load(p_do, boundary_check=(0, 1))
        b_x += tl.dot(b_do, tl.load(p_zt, boundary_check=(0, 1)).to(b_do.dtype), input_precision=PREC)
    b_x = b_w[:, None] * b_x
    _store_col(dlam, bos, T, i_t, i_h, col, tl.sum(b_q.to(ACC) * b_x, axis=1), H, L, BT)
    return b_dq + _lam_col(lam, bos, T, i_t, i_h, col, H, L, BT).to(ACC)[:, None] * b_x


@triton.jit
def _bwd_dqkv_kernel(
    q, k, v, gc, lam, z, gcc, do, dh, carry, dq, dk, dv, dlam, dg, cu_seqlens, chunk_indices, M,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, BT: tl.constexpr,
    LOG2C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    COMPACT: tl.constexpr,
):
    """dq, dk, dv, dλ and the decay's gradient dg of one chunk (all of K at once, V in blocks);
    dh [chunks, H, K, V] = sum_m [bit m-1 of n = 0] D^(m)_{n+1}, carry [chunks, H] = sum_m
    [n mod 2^m != 0] e^{G_last} <Z^(m)_n, D^(m)_{n+1}>; z [chunks, H, M, K, V], or COMPACT:
    [chunks, H, K, V] at the blocks' first readers with gcc (``_fwd_o_kernel``'s FIRST). Grid
    (chunks, H).
    dg directly (as ``triton_scalar_decay``): for token s, the terms whose decay spans g_s,
        dg_s = sum_{t >= s} q_t . dq_t^levels + sum_{j < s} k_j . dk_j^inter + carry_n
               + sum_{t >= s > j} (q_t . k_j) dA_tj
    (dq^levels: the Z^(m) reads; dk^inter: V dH^T e^{G_last - G}; dA: the weighted intra scores'
    gradient) — nothing cancels, unlike q . dq - k . dk reverse-summed."""
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1))
    b_k = tl.load(p_k, boundary_check=(0, 1))
    idx = tl.arange(0, BT)
    causal = idx[:, None] >= idx[None, :]
    causal_t = idx[:, None] <= idx[None, :]
    b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
    # D ⊙ Λ, transposed (the [BT, BT] tiles are rebuilt where needed rather than kept live)
    b_DLt = tl.where(causal_t, tl.exp(b_g[None, :] - b_g[:, None]), 0.0) * \
        _level_weights(lam, bos, T, i_t, i_h, H, L, BT, LOG2C, ACC, True)
    b_kd = (b_k * tl.exp(g_last - b_g)[:, None]).to(b_k.dtype)  # K ⊙ e^{G_last - G}
    # the forward's weighted scores, transposed, as their own product (never tl.trans of a dot)
    b_At = tl.dot(b_k, tl.trans(b_q), input_precision=PREC) * b_DLt
    b_dk = tl.zeros([BT, BK], dtype=ACC)  # V dH^T (inter-chunk part, before e^{G_last - G})
    b_dP = tl.zeros([BT, BT], dtype=ACC)  # dO V^T
    b_dPt = tl.zeros([BT, BT], dtype=ACC)  # V dO^T
    for i_v in range(tl.cdiv(V, BV)):
        p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_dh = tl.make_block_ptr(dh + (i_c * H + i_h).to(tl.int64) * K * V, (K, V), (V, 1),
                                 (0, i_v * BV), (BK, BV), (1, 0))
        p_dht = tl.make_block_ptr(dh + (i_c * H + i_h).to(tl.int64) * K * V, (V, K), (1, V),
                                  (i_v * BV, 0), (BV, BK), (0, 1))
        b_v = tl.load(p_v, boundary_check=(0, 1))
        b_do = tl.load(p_do, boundary_check=(0, 1))
        b_dh = tl.load(p_dh, boundary_check=(0, 1))
        b_dht = tl.load(p_dht, boundary_check=(0, 1))
        b_dP += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_dPt += tl.dot(b_v, tl.trans(b_do), input_precision=PREC)
        b_dk += tl.dot(b_v, b_dht.to(b_v.dtype), input_precision=PREC)
        b_dv = tl.dot(b_At.to(b_do.dtype), b_do, input_precision=PREC)
        b_dv += tl.dot(b_kd, b_dh.to(b_kd.dtype), input_precision=PREC)
        p_dv = tl.make_block_ptr(dv + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), boundary_check=(0, 1))
    b_dk = b_dk * tl.exp(g_last - b_g)[:, None]
    # the chunk levels: X_m = dO Z^(m)_n^T; dq += e^G λ^(c+m) X_m, dλ^(c+m) = e^G q . X_m
    b_dq = tl.zeros([BT, BK], dtype=ACC)
    b_eg = tl.exp(b_g)
    for i_m in range(M):
        if COMPACT:  # only the levels chunk n reads, from the block's first reader b, decayed
            if ((i_t >> i_m) & 1) == 1:
                i_z, dec = _first_reader(gcc, i_c, i_t, i_m, i_h, H, ACC)
                b_dq = _level_read(b_dq, b_q, b_eg * dec, z + (i_z * H + i_h).to(tl.int64) * K * V, do, lam,
                                   dlam, bos, T, i_t, i_h, LOG2C + 1 + i_m, H, K, V, L, BT, BK, BV, ACC, PREC)
        else:  # every level's state entering chunk n, those it does not read masked out
            b_w = tl.where(((i_t >> i_m) & 1) == 1, b_eg, 0.0)
            b_dq = _level_read(b_dq, b_q, b_w, z + ((i_c * H + i_h) * M + i_m).to(tl.int64) * K * V, do, lam,
                               dlam, bos, T, i_t, i_h, LOG2C + 1 + i_m, H, K, V, L, BT, BK, BV, ACC, PREC)
    # intra-chunk: dλ^(l) = row sums of (Q K^T ⊙ D) ⊙ dP over the pairs at level l
    b_S = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)  # raw scores q_i . k_j
    b_dP = b_dP * tl.where(causal, tl.exp(b_g[:, None] - b_g[None, :]), 0.0)  # dP ⊙ D
    b_AdP = b_S * b_dP
    for l in tl.static_range(LOG2C + 1):
        sel = _level_select(l, BT)
        _store_col(dlam, bos, T, i_t, i_h, l, tl.sum(tl.where(sel, b_AdP, 0.0), axis=1), H, L, BT)
    b_dA = b_dP * _level_weights(lam, bos, T, i_t, i_h, H, L, BT, LOG2C, ACC, False)  # dL/d(q_i . k_j)
    b_dAt = b_dPt * b_DLt  # the same, transposed
    b_a = tl.sum(b_q.to(ACC) * b_dq, axis=1)  # q_t . dq_t^levels
    b_e = tl.sum(b_k.to(ACC) * b_dk, axis=1)  # k_j . dk_j^inter
    b_r = _direct_dg(b_a, b_e, _straddle_sum(b_S * b_dA, causal), tl.load(carry + i_c * H + i_h))
    rows = i_t * BT + idx
    tl.store(dg + (bos + rows) * H + i_h, b_r, mask=rows < T)
    b_dq += tl.dot(b_dA.to(b_q.dtype), b_k, input_precision=PREC)
    b_dk += tl.dot(b_dAt.to(b_q.dtype), b_q, input_precision=PREC)
    p_dq = tl.make_block_ptr(dq + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_dk = tl.make_block_ptr(dk + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), boundary_check=(0, 1))
    tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), boundary_check=(0, 1))


# ---------------------------------------------------------------------------------------------
# host side


def chunk_levels(max_chunks: int) -> int:
    """M, the chunk levels read by chunks 0..max_chunks-1: bit_length(max_chunks - 1)."""
    return max(max_chunks - 1, 0).bit_length()


def _chunk_decays(gc: Tensor, cu: Tensor, offsets: Tensor, indices: Tensor, BT: int) -> Tensor:
    """Gc [chunks, H] in float64: the log decay of the chunks of chunk n's sequence before it (the
    sum of their G_last), so the decay from chunk b to chunk n is e^{Gc_n - Gc_b}. float64: Gc
    reaches -1e4 and more over long sequences, and only differences of nearby chunks are used."""
    seq, i_t = indices[:, 0].long(), indices[:, 1].long()
    last = torch.minimum(cu[seq].long() + (i_t + 1) * BT, cu[seq + 1].long()) - 1
    g_last = gc.reshape(-1, gc.shape[-1])[last].double()  # [chunks, H]
    before = g_last.cumsum(0) - g_last  # over every chunk before it, in the packed order
    return (before - before[offsets[seq].long()]).contiguous()  # less the earlier sequences'


@functools.lru_cache(maxsize=64)  # one host-to-device copy per layout, not per call
def segments_of(lens: tuple[int, ...], BT: int, levels: int, span: int, device: torch.device) -> Tensor:
    """``walk_segments``, cached by layout (the walks' launches reuse the device tensor)."""
    return walk_segments(list(lens), BT, levels, span, device)


def walk_segments(lens: list[int], BT: int, levels: int, span: int, device: torch.device) -> Tensor:
    """The level walks' work list, int32 [segments, 4] of (sequence, level index m - 1, first chunk,
    chunks): level m's state restarts at every 2^m-th chunk, so its walk splits into independent
    runs of whole blocks. Each segment is max(2^m, span) chunks (span 0: a level's whole sequence,
    one walk per level as before), the longest first (they set the critical path: the top level's
    single block is the whole sequence)."""
    rows = []
    for i_n, n in enumerate(lens):
        NT = -(-n // BT)
        for i_m in range(levels):  # every level, those past the sequence's too (its outputs: zeros)
            size = max(NT, 1) if span <= 0 else max(1 << (i_m + 1), span)
            rows += [(i_n, i_m, t, min(size, NT - t)) for t in range(0, NT, size)]
    rows.sort(key=lambda r: -r[3])
    return torch.tensor(rows or [(0, 0, 0, 0)], dtype=torch.int32).to(device)


def walk_list(cu: Tensor, M: int, BT: int, span: int) -> Tensor:
    """The walks' segments (``segments_of``) of the sequences ``cu``: rows of one length without
    reading ``cu`` back (the training path's layout), else from its values."""
    rows = uniform_rows(cu)
    lens = [rows[1]] * rows[0] if rows is not None else (cu[1:] - cu[:-1]).tolist()
    return segments_of(tuple(lens), BT, M, span, cu.device)


# The level walks' segments (``walk_segments``: whole blocks of a level, at least this many chunks;
# 0: one walk per level and sequence, the schedule the GPU tests passed and the timings were taken
# with), for the reverse level walk of this file's backward (``_bwd_dz_compact_kernel``) and
# log-linear DeltaNet's walks (``triton_log_linear_delta``'s inference walk,
# ``triton_log_linear_delta_train``'s forward and reverse). Exact in the interpreter either way. At
# 64k (H = 16, four value blocks) a level walk launch is 640 programs of 1024 chunks each, more
# than an H100 holds at once; in segments of 64 chunks the levels below the top four are 16 runs
# each, so no program waits on a chain longer than the top level's. Untimed.
WALK_SPAN = 0


# GROUPED_LEVELS: one level state per chunk, forward and backward. The forward's level pass sums
# the levels of blocks up to GS chunks inside each group in parallel and the rest over the groups'
# sums (a walk of T / (GS C) steps); the backward stores R^(m)_b per first reader instead of every
# D^(m)_{n+1}, gathers dH from them, and sums the decay's carry term from per-chunk scalars
# (``_bwd_dz_compact_kernel``). N states instead of N M (training: 10.7 GB fewer fp32 written and
# read, and as many for the backward's e, at 64k, H = 16, D = 128). Exact in the interpreter (float64,
# every gradient against the naive form; GS 2 / 4 / 16) and compiled for sm_90a without spills. On
# an H100 (2026-12-07, session 19; B=1 H=16 K=V=128 bf16) its gpu tests passed (test_triton_log_linear.py,
# both settings) and it took log-linear Mamba-2 from 4.47 to 3.23 ms forward and 36.8 to 20.4 ms
# forward + backward at 64k (1.09 -> 0.84, 7.62 -> 5.10 at 16k): on. The N M path stays behind
# False until it is deleted.
LEVEL_GROUP = 16
GROUPED_LEVELS = True


def _grouped_levels(k: Tensor, v: Tensor, gc: Tensor, cu: Tensor, offsets: Tensor, NC: int, M: int,
                      BT: int, dtype: torch.dtype) -> Tensor:
    """The level states the output pass reads (``GROUPED_LEVELS``), z [chunks, H, K, V] in ``dtype``:
    chunk b >= 1 of a sequence holds Z^(m) for m = ctz(b) + 1, the one level whose block's first
    reader it is (the block's later readers decay it from there), about N states instead of M walks
    over the chunks. Levels with blocks of up to GS chunks
    inside each group (``_fwd_z_group_kernel``, every group in parallel), the rest from the
    groups' sums (``_fwd_z_top_kernel``)."""
    _, _, H, K = k.shape
    V = v.shape[-1]
    acc, ACC = _acc(k.dtype)
    opts = launch_options("log_linear.fwd_z_group", num_warps=8, num_stages=1, GS=LEVEL_GROUP, BK=64, BV=64)
    GS, BK, BV = opts.pop("GS"), opts.pop("BK"), opts.pop("BV")
    if GS < 2 or GS & (GS - 1):
        raise ValueError(f"log_linear.fwd_z_group: GS must be a power of two >= 2, got {GS}")
    LG = GS.bit_length() - 1
    goffsets, gindices, NG = chunk_layout(cu, BT * GS)
    z = k.new_empty(NC, H, K, V, dtype=dtype)
    zg = k.new_empty(NG, H, K, V, dtype=acc)
    ag = k.new_empty(NG, H, dtype=acc)
    _fwd_z_group_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), NG * H)](
        k, v, gc, z, zg, ag, cu, offsets, gindices, H=H, K=K, V=V, BT=BT, GS=GS,
        LP=triton.next_power_of_2(LG), BK=BK, BV=BV, ACC=ACC, PREC=_prec(k.dtype), **opts,
    )
    if M > LG:
        top = launch_options("log_linear.fwd_z_top", num_warps=4, num_stages=2)
        _fwd_z_top_kernel[(triton.cdiv(K, 32), triton.cdiv(V, 32), (cu.numel() - 1) * H)](
            zg, ag, z, cu, offsets, goffsets, H=H, K=K, V=V, BT=BT, GS=GS,
            MP=triton.next_power_of_2(M - LG), BK=32, BV=32, ACC=ACC, **top,
        )
    return z


def _forward(q, k, v, g, lam, cu, chunk_size, train: bool):
    """The forward kernels. With ``GROUPED_LEVELS``: one level state per chunk, each block's first
    reader's (``_grouped_levels``; fp32 when train, else the input dtype), read by the later
    readers decayed. Without: M walks over every chunk, keeping every level state entering every
    chunk in fp32 when train (the backward reads them all), else the first readers' in the input
    dtype. o agrees to rounding. Returns o and, when train, (gc, z, gcc, offsets, indices, NC, M,
    compact)."""
    offsets, indices, NC = chunk_layout(cu, chunk_size)
    _, _, H, K = q.shape
    V, L = v.shape[-1], lam.shape[-1]
    N = cu.numel() - 1
    M = chunk_levels(-(-max_seqlen(cu) // chunk_size))  # chunks of the longest
    LOG2C = chunk_size.bit_length() - 1
    _, BK, BV = _blocks(K, V)
    acc, ACC = _acc(q.dtype)
    prec = _prec(q.dtype)
    gc = torch.empty(g.shape, dtype=acc, device=g.device)
    _chunk_cumsum_kernel[(NC, H)](g, gc, cu, indices, H=H, BT=chunk_size)
    compact = GROUPED_LEVELS and M > 0
    z, MZ = q, M  # q: unread without chunk levels
    if compact:
        z, MZ = _grouped_levels(k, v, gc, cu, offsets, NC, M, chunk_size, acc if train else _state_dtype(q.dtype)), 1
    elif M:
        z = q.new_empty(NC, H, M, K, V, dtype=acc if train else _state_dtype(q.dtype))
        _fwd_z_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H * M)](
            k, v, gc, z, cu, offsets, M, H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV, ACC=ACC,
            PREC=prec, STORE_ALL=train, **launch_options("log_linear.fwd_z", num_warps=4, num_stages=3),
        )
    first = bool(M) and (compact or not train)  # the later readers decay the first reader's state
    gcc = _chunk_decays(gc, cu, offsets, indices, chunk_size) if first else q  # q: unread
    o = torch.empty_like(v)
    _fwd_o_kernel[(triton.cdiv(V, BV), NC, H)](
        q, k, v, gc, lam, z, gcc, o, cu, indices, M, max(MZ, 1), H=H, K=K, V=V, L=L, BT=chunk_size, LOG2C=LOG2C,
        BK=BK, BV=BV, ACC=ACC, PREC=prec, FIRST=first,
        **launch_options("log_linear.fwd_o", num_warps=4, num_stages=3),
    )
    return o, ((gc, z, gcc, offsets, indices, NC, M, compact) if train else None)


def _carry_from_scalars(cz: Tensor, indices: Tensor, offsets: Tensor) -> Tensor:
    """The carry term [chunks, H] from ``_bwd_dz_compact_kernel``'s scalars cz [chunks, H, M, ...]:
    for each level m, a reader chunk n gets the c of the later chunks of its block's reader half,
    a source chunk n the u of the earlier chunks of its block's source half (none at the block's
    start). Sums in float64, as differences of one running sum over the packed chunks."""
    val = cz.flatten(3).sum(3, dtype=torch.float64)  # [chunks, H, M]
    NC, _, M = val.shape
    cs = torch.cat([val.new_zeros(1, *val.shape[1:]), val.cumsum(0)])  # cs[n] = sum over x < n
    n = torch.arange(NC, device=val.device)
    seq, rel = indices[:, 0].long(), indices[:, 1].long()
    last = offsets.long()[seq + 1] - 1  # the sequence's last chunk
    i_m = torch.arange(M, device=val.device)[:, None]  # every level at once: [M, NC] indices
    first = n - (rel & ((1 << i_m) - 1))  # the first chunk of n's half of its level-m block
    end = torch.minimum(first + (1 << i_m) - 1, last)
    after = cs[end + 1, :, i_m] - cs[n + 1, :, i_m]  # [M, NC, H]
    before = cs[n, :, i_m] - cs[first, :, i_m]
    carry = torch.where((((rel >> i_m) & 1) == 1)[..., None], after, before).sum(0)
    return carry.to(cz.dtype)


class _LogLinearScalarDecayFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, lam, cu, chunk_size):
        o, (gc, z, gcc, offsets, indices, NC, M, compact) = _forward(q, k, v, g, lam, cu, chunk_size, train=True)
        ctx.save_for_backward(q, k, v, gc, lam, z, gcc, cu, offsets, indices)
        ctx.meta = (chunk_size, NC, M, g.dtype, compact)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, gc, lam, z, gcc, cu, offsets, indices = ctx.saved_tensors
        BT, NC, M, g_dtype, compact = ctx.meta
        _, _, H, K = q.shape
        V, L = v.shape[-1], lam.shape[-1]
        N = cu.numel() - 1
        LOG2C = BT.bit_length() - 1
        BKf, BK, BV = _blocks(K, V)
        acc, ACC = _acc(q.dtype)
        prec = _prec(q.dtype)
        do = do.contiguous()
        nK, nV = triton.cdiv(K, BK), triton.cdiv(V, BV)
        if M and compact:  # first readers' states only: R^(m)_b and the carry's scalars, dH gathered
            r = q.new_empty(NC, H, K, V, dtype=acc)
            cz = q.new_empty(NC, H, M, nK, nV, dtype=acc)
            opts = launch_options("log_linear.bwd_dz_compact", num_warps=4, num_stages=2, SPAN=WALK_SPAN)
            segments = walk_list(cu, M, BT, opts.pop("SPAN"))
            _bwd_dz_compact_kernel[(nK, nV, segments.shape[0] * H)](
                q, k, v, do, gc, lam, z, gcc, r, cz, cu, offsets, segments, M, H=H, K=K, V=V, L=L, BT=BT,
                LOG2C=LOG2C, BK=BK, BV=BV, ACC=ACC, PREC=prec, **opts,
            )
            dh = q.new_empty(NC, H, K, V, dtype=acc)
            _bwd_dh_gather_kernel[(nK, nV, NC * H)](
                gc, gcc, r, dh, cu, indices, offsets, M, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, ACC=ACC,
                **launch_options("log_linear.bwd_dh_gather", num_warps=4, num_stages=2),
            )
            carry = _carry_from_scalars(cz, indices, offsets)
        elif M:
            e = q.new_empty(NC, H, M, K, V, dtype=acc)
            carry = q.new_empty(NC, H, M, nK, nV, dtype=acc)
            _bwd_dz_kernel[(nK, nV, N * H * M)](
                q, do, gc, lam, z, e, carry, cu, offsets, M, H=H, K=K, V=V, L=L, BT=BT, LOG2C=LOG2C,
                BK=BK, BV=BV, ACC=ACC, PREC=prec,
                **launch_options("log_linear.bwd_dz", num_warps=4, num_stages=3),
            )
            dh = e.sum(2)  # [chunks, H, K, V]: what all the levels send to each chunk's sources
            carry = carry.sum((2, 3, 4))  # [chunks, H]
        else:
            dh = q.new_zeros(NC, H, K, V, dtype=acc)
            carry = q.new_zeros(NC, H, dtype=acc)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dlam = torch.zeros_like(lam)
        dg = torch.empty(q.shape[:3], dtype=acc, device=q.device)
        _bwd_dqkv_kernel[(NC, H)](
            q, k, v, gc, lam, z, gcc, do, dh, carry, dq, dk, dv, dlam, dg, cu, indices, M,
            H=H, K=K, V=V, L=L, BT=BT, LOG2C=LOG2C, BK=BKf, BV=min(BV, 32), ACC=ACC, PREC=prec,
            COMPACT=compact,
            # 8 warps: ptxas spills 3268 -> 332 bytes per thread at K = V = 128 (bf16, sm_90a;
            # benchmarks/results/2026-12-07-cpu-ptxas); not yet timed on a GPU
            **launch_options("log_linear.bwd_dqkv", num_warps=8, num_stages=1),
        )
        return dq, dk, dv, dg.to(g_dtype), dlam, None, None


def log_linear_scalar_decay_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    lam: Tensor,
    *,
    chunk_size: int = 64,
    cu_seqlens: Tensor | None = None,
) -> Tensor:
    """Chunked log-linear attention over a scalar decay, on the GPU (inputs checked by the caller;
    no initial state, no final state, positions start at 0).

    q, k: [B, T, H, K] (q already scaled); v: [B, T, H, V]; g: [B, T, H] log decay (<= 0);
    lam: [B, T, H, L] level weights, L >= bit_length(T - 1) + 1 (levels past it are unused);
    chunk_size: a power of two >= 16 (a kernel tile: results do not depend on it); cu_seqlens:
    [N+1] int offsets of packed sequences in T (B = 1; positions restart at 0 in each) or None.
    Returns o [B, T, H, V] in q's dtype. fp32 accumulation and states for half inputs (fp64 for fp64).
    """
    B, T, H, _ = q.shape
    cu, flat = packed_sequences(B, T, q.device, cu_seqlens)
    q, k, v, g, lam = (flat(t).contiguous() for t in (q, k, v, g, lam))
    if grad_wanted(q, k, v, g, lam):
        o = _LogLinearScalarDecayFn.apply(q, k, v, g, lam, cu, chunk_size)
    else:  # no gradient wanted: the inference forward (``_forward``)
        o, _ = _forward(q, k, v, g, lam, cu, chunk_size, train=False)
    return o.reshape(B, T, H, v.shape[-1])


__all__ = ["chunk_levels", "log_linear_scalar_decay_chunk"]

"""Triton kernels of the chunked delta rule (DeltaNet) and gated delta rule (Gated DeltaNet).

The recurrence, state S [K, V] (the transpose of the papers' S), alpha_t = exp(g_t) (1 for DeltaNet):
    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,      o_t = scale q_t^T S_t
In chunks of C tokens with chunk-local cumulative log-gates ``G_i = g_0 + ... + g_i`` (<= 0) and
Gam_ij = exp(G_i - G_j) (Yang et al. 2024, DeltaNet §3.3 WY / UT transform; Yang et al. 2025,
Gated DeltaNet §3.3):
    A      = StrictTril(diag(beta) (K K^T ⊙ Gam))                            [C, C]
    X      = (I + A)^{-1},   W = X diag(beta) (e^G ⊙ K),   U = X diag(beta) V
    Delta  = U - W S_n                                    (the chunk's pseudo-values, [C, V])
    O      = scale ((Q ⊙ e^G) S_n + (Q K^T ⊙ Gam ⊙ [i >= j]) Delta)
    S_{n+1} = e^{G_last} S_n + (K ⊙ e^{G_last - G})^T Delta

Kernels (everything below runs in Triton; the host only allocates and launches):
  forward   _chunk_cumsum_kernel (shared) -> _wy_fwd_kernel (A, X, W, U per chunk; grid chunks x H)
            -> _delta_h_kernel (S_n and Delta, sequential over chunks; grid V/BV x N*H)
            -> triton_scalar_decay._fwd_o_kernel with V = Delta (O per chunk; grid V/BV x chunks x H)
  backward  [_delta_dv_intra_kernel (dDelta's intra-chunk part; grid chunks x H; DH_INTRA_OUTSIDE)]
            -> _delta_dh_kernel (dS_{n+1} and dDelta, reverse over chunks; grid V/BV x N*H)
            -> _delta_dqk_kernel (dq, the attention part of dk, dW; grid chunks x H)
            -> _wy_bwd_kernel (dk, dv, dbeta through the UT transform; grid chunks x H)
            -> _delta_dg_kernel (the gates' gradient, gated only; grid chunks x H)

The inverse X: A is strictly lower triangular. Its 16 x 16 diagonal blocks D = I + A_diag are
inverted by forward substitution, all blocks at once, one row of each block per step (15 masked
[C, C] products; with VECTOR_DIAG_INVERSE element-wise on [C/16, 16, 16] instead); the rest is block forward substitution written as the finite Neumann series
X = (I - N + N^2 - N^3) D^{-1}, N = D^{-1} A_off (strictly block-lower, so N^4 = 0 for C <= 64).

Backward (derived here from the chunk form; dS_{n+1} is the gradient of the state after chunk n):
    dDelta  = scale (Q K^T ⊙ Gam)^T dO + (K ⊙ e^{G_last - G}) dS_{n+1}
    dS_n    = e^{G_last} dS_{n+1} + scale (Q ⊙ e^G)^T dO - W^T dDelta          (reverse pass)
    dQ      = scale ((dO S_n^T) ⊙ e^G + (dO Delta^T ⊙ Gam) K)
    dK     += scale (dO Delta^T ⊙ Gam)^T Q + (Delta dS_{n+1}^T) ⊙ e^{G_last - G}
    dU = dDelta,  dW = -dDelta S_n^T
and through the UT transform, with Vb = diag(beta) V, Kb = diag(beta) e^G K, dVb = X^T dU,
dKb = X^T dW and dA = -StrictTril(dVb U^T + dKb W^T) (from dX = -X^T d(I+A) X^T):
    dV = beta ⊙ dVb,   dbeta = rowsum(V ⊙ dVb + e^G K ⊙ dKb + dA ⊙ Gam ⊙ K K^T)
    dK += beta e^G ⊙ dKb + M K + M^T K,      M = diag(beta) (dA ⊙ Gam)
The gate's gradient, per token and directly (derived here; _delta_dg_kernel has it in chunk terms):
    dg_t = <dS_t, ∂S_t/∂g_t> = e^{g_t} <(I - beta_t k_t k_t^T) S_{t-1}, dS_t>
Every term of its chunk form carries the decays between the tokens it joins, so nothing cancels.
(The identity dGglob_t = q_t . dq_t - v_t . dv_t, reverse-summed, gives the same in exact
arithmetic, but its terms cancel down to dg's size: with harsh gates it lost all precision in
half precision, 0.75 relative error in bf16 on an H100, 9.4e-2 in float16 in the interpreter; the
direct form measured 1.8e-4 there, as the other gradients.)

Padded rows of a sequence's last chunk take G = G_last (not 0), so every exp below has a
non-positive argument even with harsh gates (with 0, exp(G_i - G_j) for a padded i and a real j
could overflow and 0 * inf would poison the column sums of the backward).

Hopper pitfalls (as in triton_scalar_decay): a transpose is never taken with tl.trans of a dot's
result (Triton 3.4 - 3.7.0 miscompiles that on Hopper: flash-linear-attention issue #640); each
transpose needed is its own product (X^T is loaded through transposed strides, dA^T is formed as
U dU^T X + W dW^T X). A [K, 64] tile loaded through transposed strides and fed to tl.dot untouched
gave wrong states in bf16 for K > 64 (2026-12-06, H100 and H200; the same tile rescaled in
registers first was right), so the state passes put K^T and W^T through registers before their
dots (not yet checked on a GPU). Compiled for sm_90 on a CPU (tests/ops/hopper_codegen.py), the old
passes fed wgmma that tile as its A operand straight from MN-major shared memory with K > 64 rows
(two warpgroup halves along M) exactly where the GPU went wrong (forward ungated, backward gated
and ungated); the gated forward and K = 64 did not; the current passes never do
(tests/ops/test_hopper_codegen.py keeps it so). The backward state pass at K > 64 in half
precision was still miscompiled (wrong and run-to-run different dS / dDelta on an H100, 2026-12-07)
until three of its products took fp32 operands (``HALF_DH_F32_DOTS``). fp32 accumulation and fp32 states for bf16 / fp16 / fp32 inputs, fp64 for
fp64; the inverse, W, U and the UT backward run in the accumulation dtype (TF32 dots for half
inputs, IEEE for fp32 unless torch allows TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from longctx.ops.common import triton_scalar_decay
from longctx.ops.common.triton_launch import launch_options
from longctx.ops.common.triton_scalar_decay import (
    _acc,
    _chunk,
    _chunk_cumsum_kernel,
    _cols,
    _fwd_o_kernel,
    _init_pieces,
    _load_g,
    _load_g_if,
    _pieces_out,
    _prec,
    _rows_t,
    _sequence,
    _state_dtype,
    _store_pieces,
    _straddle_sum,
    _sum_after,
    _sum_before,
    chunk_layout,
    grad_wanted,
    packed_sequences,
)


@triton.jit
def _diag_block_inverse(b_A, BT: tl.constexpr, ACC: tl.constexpr):
    """(I + A_d)^{-1} [BT, BT] (block diagonal), A_d the 16 x 16 diagonal blocks of a strictly
    lower-triangular A [BT, BT]: forward substitution on the blocks as [BT/16, 16, 16], step i
    finishing row i of every block with element-wise FMAs in ACC (no products)."""
    NB: tl.constexpr = BT // 16
    i16 = tl.arange(0, 16)
    blk = tl.arange(0, NB)
    same = blk[:, None, None, None] == blk[None, None, :, None]  # [NB, 1, NB, 1]
    b_Ad = tl.sum(tl.where(same, tl.reshape(b_A, [NB, 16, NB, 16]), 0.0), axis=2)  # [NB, 16, 16]
    b_X = tl.zeros([NB, 16, 16], dtype=ACC) + (i16[:, None] == i16[None, :]).to(ACC)[None, :, :]
    for i in tl.static_range(1, 16):
        row = (i16 == i)[None, :, None]
        b_a = tl.sum(tl.where(row, b_Ad, 0.0), axis=1)  # [NB, 16]: row i of every block
        # row i = e_i - sum_{j < i} A_ij X_j (the rows j < i final; A_ij = 0 for j >= i)
        b_X -= tl.where(row, tl.sum(b_a[:, :, None] * b_X, axis=1)[:, None, :], 0.0)
    return tl.reshape(tl.where(same, b_X[:, :, None, :], 0.0), [BT, BT])


@triton.jit
def _unit_lower_inverse(b_A, BT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                        VEC_INV: tl.constexpr = False):
    """(I + A)^{-1} for a strictly lower-triangular A [BT, BT], BT in {16, 32, 64}. VEC_INV: the
    diagonal blocks by ``_diag_block_inverse`` (``VECTOR_DIAG_INVERSE``), else by 15 products."""
    idx = tl.arange(0, BT)
    same = (idx[:, None] // 16) == (idx[None, :] // 16)
    b_I = (idx[:, None] == idx[None, :]).to(ACC)
    if VEC_INV:
        b_X = _diag_block_inverse(b_A, BT, ACC)
    else:
        b_Ad = tl.where(same, b_A, 0.0)  # the 16 x 16 diagonal blocks
        b_X = b_I
        # forward substitution inside every diagonal block at once: step i finishes row i of each
        # block (row r = e_r - sum_{j < r} A_rj X_j, the rows j of its block before it being final)
        for i in range(1, 16):
            b_X -= tl.dot(tl.where((idx % 16 == i)[:, None], b_Ad, 0.0), b_X, input_precision=PREC)
    if BT > 16:  # block forward substitution: (I + N)^{-1} D^{-1} with N = D^{-1} A_off, N^4 = 0
        b_N = tl.dot(b_X, tl.where(same, 0.0, b_A), input_precision=PREC)
        b_N2 = tl.dot(b_N, b_N, input_precision=PREC)
        b_Y = b_I - b_N + b_N2
        if BT > 32:
            b_Y -= tl.dot(b_N2, b_N, input_precision=PREC)
        b_X = tl.dot(b_Y, b_X, input_precision=PREC)
    return b_X


@triton.jit
def _chunk_beta(beta, cu_seqlens, chunk_indices, i_c, i_h, H: tl.constexpr, BT: tl.constexpr, ACC: tl.constexpr):
    """Chunk i_c's index in its sequence, the sequence's first token and length (``_chunk``), and
    beta of the chunk's rows [BT] (zero past the end)."""
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    rows = i_t * BT + tl.arange(0, BT)
    return i_t, bos, T, tl.load(beta + (bos + rows) * H + i_h, mask=rows < T, other=0.0).to(ACC)


@triton.jit
def _wy_fwd_kernel(
    k, v, beta, gc, ainv, w, u, cu_seqlens, chunk_indices,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, PRECA: tl.constexpr,
    STORE_X: tl.constexpr, VEC_INV: tl.constexpr, HALF_WU: tl.constexpr,
):
    """X = (I + A)^{-1} (into ainv [chunks, H, BT, BT] if STORE_X: the backward reads it), W and U
    of one chunk; grid (chunks, H). HALF_WU (half inputs only): W = X (beta e^G K) and U = X (beta V)
    with X and the scaled K / V rounded to the input dtype (``HALF_WU``), else TF32 / IEEE in ACC."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, bos, T, b_beta = _chunk_beta(beta, cu_seqlens, chunk_indices, i_c, i_h, H, BT, ACC)
    idx = tl.arange(0, BT)
    b_A = tl.zeros([BT, BT], dtype=ACC)
    for i_k in range(tl.cdiv(K, BK)):
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_k = tl.load(p_k, boundary_check=(0, 1))
        b_A += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)  # K K^T
    strict = idx[:, None] > idx[None, :]
    if HAS_G:
        b_g, _ = _load_g(gc, bos, T, i_t, i_h, H, BT)
        b_A *= tl.exp(tl.where(strict, b_g[:, None] - b_g[None, :], float("-inf")))
        b_kscale = b_beta * tl.exp(b_g)  # diag(beta) e^G
    else:
        b_A = tl.where(strict, b_A, 0.0)
        b_kscale = b_beta
    b_X = _unit_lower_inverse(b_A * b_beta[:, None], BT, ACC, PRECA, VEC_INV)
    if STORE_X:
        p_X = tl.make_block_ptr(ainv + (i_c * H + i_h).to(tl.int64) * BT * BT, (BT, BT), (BT, 1), (0, 0), (BT, BT), (1, 0))
        tl.store(p_X, b_X.to(p_X.dtype.element_ty))
    if HALF_WU:  # X rounded once to the inputs' half dtype: W and U by half-precision dots
        b_Xw = b_X.to(k.dtype.element_ty)
    for i_k in range(tl.cdiv(K, BK)):
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_k = tl.load(p_k, boundary_check=(0, 1))
        if HALF_WU:
            b_w = tl.dot(b_Xw, (b_k * b_kscale[:, None]).to(b_k.dtype), input_precision=PREC)
        else:
            b_w = tl.dot(b_X, b_k.to(ACC) * b_kscale[:, None], input_precision=PRECA)
        p_w = tl.make_block_ptr(w + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        tl.store(p_w, b_w.to(p_w.dtype.element_ty), boundary_check=(0, 1))
    for i_v in range(tl.cdiv(V, BV)):
        p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_v = tl.load(p_v, boundary_check=(0, 1))
        if HALF_WU:
            b_u = tl.dot(b_Xw, (b_v * b_beta[:, None]).to(b_v.dtype), input_precision=PREC)
        else:
            b_u = tl.dot(b_X, b_v.to(ACC) * b_beta[:, None], input_precision=PRECA)
        p_u = tl.make_block_ptr(u + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_u, b_u.to(p_u.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _delta_h_kernel(
    k, w, u, gc, h, vn, h0, ht, cu_seqlens, chunk_offsets,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HT: tl.constexpr, GATE_D: tl.constexpr,
):
    """S_n at every chunk start (into h), Delta = U - W S_n (into vn) and the final state, in order
    over the chunks; grid (V/BV, N*H). The rows of S (key dims) are up to four pieces of BK <= 64
    rows (K <= 256), each its own tile, as in ``_delta_dh_kernel``: every product has at most 64
    rows. (All of K in one tile gave wrong bf16 states for K > 64 on Hopper when K^T went to
    tl.dot straight from its transposed load: benchmarks/results/2026-12-06-h100-session10.)"""
    tl.static_assert(BK <= 64 and K <= 4 * BK, "S is held as up to four pieces of at most 64 rows")
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    b_h1, b_h2, b_h3, b_h4 = _init_pieces(h0, i_nh, i_v, USE_H0, ACC, K, V, BK, BV)
    for i_t in range(NT):
        _store_pieces(h, (boh + i_t) * H + i_h, i_v, b_h1, b_h2, b_h3, b_h4, K, V, BK, BV)
        p_u = tl.make_block_ptr(u + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_d = tl.load(p_u, boundary_check=(0, 1), padding_option="zero").to(ACC)
        # Delta = U - W S_n [BT, BV], summed over the pieces
        b_w = _cols(w, bos, T, i_t, i_h, 0, H, K, BT, BK)
        b_d -= tl.dot(b_w, b_h1.to(b_w.dtype), input_precision=PREC)
        if K > BK:
            b_d -= tl.dot(_cols(w, bos, T, i_t, i_h, 1, H, K, BT, BK), b_h2.to(b_w.dtype), input_precision=PREC)
        if K > 2 * BK:
            b_d -= tl.dot(_cols(w, bos, T, i_t, i_h, 2, H, K, BT, BK), b_h3.to(b_w.dtype), input_precision=PREC)
        if K > 3 * BK:
            b_d -= tl.dot(_cols(w, bos, T, i_t, i_h, 3, H, K, BT, BK), b_h4.to(b_w.dtype), input_precision=PREC)
        p_vn = tl.make_block_ptr(vn + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_vn, b_d.to(p_vn.dtype.element_ty), boundary_check=(0, 1))
        b_g, g_last = _load_g_if(gc, bos, T, i_t, i_h, H, BT, HAS_G)
        b_h1, b_h2, b_h3, b_h4 = _pieces_out(b_h1, b_h2, b_h3, b_h4, k, b_d, b_g, g_last, bos, T, i_t, i_h,
                                             H, K, BT, BK, HAS_G, PREC, GATE_D)
    if STORE_HT:
        _store_pieces(ht, i_nh, i_v, b_h1, b_h2, b_h3, b_h4, K, V, BK, BV)


@triton.jit
def _dh_piece_in(b_dh, b_k, b_qt, g_last, b_g, HAS_G: tl.constexpr, PREC: tl.constexpr,
                 PRECA: tl.constexpr, F32_DOTS: tl.constexpr, WANT_P: tl.constexpr = True):
    """One piece's share of the chunk's scores P^T = K Q^T (WANT_P; else 0.0) and of dDelta's state
    part (K ⊙ e^{G_last - G}) dS: (P^T part [BT, BT], dDelta part [BT, BV]). F32_DOTS & 2: the
    latter with fp32 operands (dS unrounded)."""
    b_pt = 0.0
    if WANT_P:
        b_pt = tl.dot(b_k, b_qt, input_precision=PREC)
    if F32_DOTS & 2:
        b_kf = b_k.to(b_dh.dtype)
        if HAS_G:
            b_kf *= tl.exp(g_last - b_g)[:, None]
        return b_pt, tl.dot(b_kf, b_dh, input_precision=PRECA)
    if HAS_G:
        b_k = (b_k * tl.exp(g_last - b_g)[:, None]).to(b_k.dtype)
    return b_pt, tl.dot(b_k, b_dh.to(b_k.dtype), input_precision=PREC)


@triton.jit
def _dh_piece_out(b_dh, b_qt, b_wt, b_do, b_dd, b_g, g_last, scale, HAS_G: tl.constexpr, PREC: tl.constexpr,
                  PRECA: tl.constexpr, F32_DOTS: tl.constexpr):
    """dS (one piece of rows) before the chunk: e^{G_last} dS + scale (Q ⊙ e^G)^T dO - W^T dDelta.
    F32_DOTS & 4: W^T dDelta with fp32 operands (dDelta unrounded)."""
    if HAS_G:
        b_dh *= tl.exp(g_last)
        b_qt = (b_qt * (tl.exp(b_g) * scale)[None, :]).to(b_do.dtype)
    else:
        b_qt = (b_qt * scale).to(b_do.dtype)
    b_dh += tl.dot(b_qt, b_do, input_precision=PREC)
    if F32_DOTS & 4:
        return b_dh - tl.dot(b_wt.to(b_dd.dtype), b_dd, input_precision=PRECA)
    return b_dh - tl.dot(b_wt, b_dd.to(b_wt.dtype), input_precision=PREC)


@triton.jit
def _dd_intra(b_Pt, b_do, b_g, causal_t, scale, HAS_G: tl.constexpr, PREC: tl.constexpr, PRECA: tl.constexpr,
              F32_DOTS: tl.constexpr):
    """dDelta's intra-chunk part scale (P^T ⊙ Gam^T)_{i>=j} dO from the unscaled P^T [j, i] = k_j . q_i."""
    if HAS_G:
        b_Pt *= tl.exp(tl.where(causal_t, b_g[None, :] - b_g[:, None], float("-inf"))) * scale
    else:
        b_Pt = tl.where(causal_t, b_Pt * scale, 0.0)
    if F32_DOTS & 1:  # P^T with fp32 operands
        return tl.dot(b_Pt, b_do.to(b_Pt.dtype), input_precision=PRECA)
    return tl.dot(b_Pt.to(b_do.dtype), b_do, input_precision=PREC)


@triton.jit
def _delta_dv_intra_kernel(
    q, k, gc, do, dvn, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, PRECA: tl.constexpr,
    F32_DOTS: tl.constexpr,
):
    """dDelta's intra-chunk part, scale (Q K^T ⊙ Gam)^T_{i>=j} dO, of one chunk into dvn [T, H, V]
    (fp32), for ``_delta_dh_kernel`` (INTRA_IN) to complete; grid (chunks, H). Off the reverse
    pass's sequential path (``DH_INTRA_OUTSIDE``)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    idx = tl.arange(0, BT)
    b_Pt = tl.zeros([BT, BT], dtype=ACC)
    for p in range(tl.cdiv(K, BK)):  # P^T [j, i] = k_j . q_i, by pieces of key dims
        b_Pt += tl.dot(_cols(k, bos, T, i_t, i_h, p, H, K, BT, BK), _rows_t(q, bos, T, i_t, i_h, p, H, K, BT, BK),
                       input_precision=PREC)
    b_g, _ = _load_g_if(gc, bos, T, i_t, i_h, H, BT, HAS_G)
    causal_t = idx[:, None] <= idx[None, :]  # [j, i]: i >= j
    for i_v in range(tl.cdiv(V, BV)):
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_do = tl.load(p_do, boundary_check=(0, 1), padding_option="zero")
        b_dd = _dd_intra(b_Pt, b_do, b_g, causal_t, scale, HAS_G, PREC, PRECA, F32_DOTS)
        p_dvn = tl.make_block_ptr(dvn + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_dvn, b_dd.to(p_dvn.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _delta_dh_kernel(
    q, k, w, gc, do, dh, dvn, dht, dh0, cu_seqlens, chunk_offsets, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PRECA: tl.constexpr = "ieee", F32_DOTS: tl.constexpr = 0,
    INTRA_IN: tl.constexpr = False,
):
    """dS_{n+1} for every chunk n (into dh) and dDelta (into dvn), reverse over the chunks; grid
    (V/BV, N*H). INTRA_IN: dvn already holds dDelta's intra-chunk part (``_delta_dv_intra_kernel``,
    ``DH_INTRA_OUTSIDE``), read and completed here; else it is formed here too. The rows of dS (key dims) are held as up to four pieces of BK <= 64 rows (K <= 256),
    each its own tile: every product has at most 64 rows. (With all of K in one [K, BV] tile, the
    bf16 kernel faulted on an H100 with an illegal memory access for K >= 128 — at 8 warps, or with
    a partial last chunk and states in / out — and never for K = 64; 2026-12-06 / 07.)"""
    tl.static_assert(BK <= 64 and K <= 4 * BK, "S is held as up to four pieces of at most 64 rows")
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    b_dh1, b_dh2, b_dh3, b_dh4 = _init_pieces(dht, i_nh, i_v, USE_DHT, ACC, K, V, BK, BV)
    idx = tl.arange(0, BT)
    causal_t = idx[:, None] <= idx[None, :]  # [j, i]: i >= j
    WANT_P: tl.constexpr = not INTRA_IN  # the chunk's scores P^T, for dDelta's intra-chunk part
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        i_s = (boh + i_t) * H + i_h
        _store_pieces(dh, i_s, i_v, b_dh1, b_dh2, b_dh3, b_dh4, K, V, BK, BV)
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_do = tl.load(p_do, boundary_check=(0, 1), padding_option="zero")
        b_g, g_last = _load_g_if(gc, bos, T, i_t, i_h, H, BT, HAS_G)
        # P^T [j, i] = k_j . q_i and dDelta = P dO + (K ⊙ e^{G_last - G}) dS, summed over the pieces
        b_Pt, b_dd = _dh_piece_in(b_dh1, _cols(k, bos, T, i_t, i_h, 0, H, K, BT, BK),
                                  _rows_t(q, bos, T, i_t, i_h, 0, H, K, BT, BK), g_last, b_g, HAS_G, PREC, PRECA,
                                  F32_DOTS, WANT_P)
        if K > BK:
            b_pt, b_d = _dh_piece_in(b_dh2, _cols(k, bos, T, i_t, i_h, 1, H, K, BT, BK),
                                     _rows_t(q, bos, T, i_t, i_h, 1, H, K, BT, BK), g_last, b_g, HAS_G, PREC, PRECA,
                                     F32_DOTS, WANT_P)
            b_Pt += b_pt
            b_dd += b_d
        if K > 2 * BK:
            b_pt, b_d = _dh_piece_in(b_dh3, _cols(k, bos, T, i_t, i_h, 2, H, K, BT, BK),
                                     _rows_t(q, bos, T, i_t, i_h, 2, H, K, BT, BK), g_last, b_g, HAS_G, PREC, PRECA,
                                     F32_DOTS, WANT_P)
            b_Pt += b_pt
            b_dd += b_d
        if K > 3 * BK:
            b_pt, b_d = _dh_piece_in(b_dh4, _cols(k, bos, T, i_t, i_h, 3, H, K, BT, BK),
                                     _rows_t(q, bos, T, i_t, i_h, 3, H, K, BT, BK), g_last, b_g, HAS_G, PREC, PRECA,
                                     F32_DOTS, WANT_P)
            b_Pt += b_pt
            b_dd += b_d
        p_dvn = tl.make_block_ptr(dvn + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                  (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        if INTRA_IN:  # the intra-chunk part, from the parallel kernel
            b_dd += tl.load(p_dvn, boundary_check=(0, 1), padding_option="zero").to(b_dd.dtype)
        else:
            b_dd += _dd_intra(b_Pt, b_do, b_g, causal_t, scale, HAS_G, PREC, PRECA, F32_DOTS)  # dDelta [BT, BV]
        tl.store(p_dvn, b_dd.to(p_dvn.dtype.element_ty), boundary_check=(0, 1))
        b_dh1 = _dh_piece_out(b_dh1, _rows_t(q, bos, T, i_t, i_h, 0, H, K, BT, BK),
                              _rows_t(w, bos, T, i_t, i_h, 0, H, K, BT, BK), b_do, b_dd, b_g, g_last, scale, HAS_G, PREC, PRECA, F32_DOTS)
        if K > BK:
            b_dh2 = _dh_piece_out(b_dh2, _rows_t(q, bos, T, i_t, i_h, 1, H, K, BT, BK),
                                  _rows_t(w, bos, T, i_t, i_h, 1, H, K, BT, BK), b_do, b_dd, b_g, g_last, scale, HAS_G, PREC, PRECA, F32_DOTS)
        if K > 2 * BK:
            b_dh3 = _dh_piece_out(b_dh3, _rows_t(q, bos, T, i_t, i_h, 2, H, K, BT, BK),
                                  _rows_t(w, bos, T, i_t, i_h, 2, H, K, BT, BK), b_do, b_dd, b_g, g_last, scale, HAS_G, PREC, PRECA, F32_DOTS)
        if K > 3 * BK:
            b_dh4 = _dh_piece_out(b_dh4, _rows_t(q, bos, T, i_t, i_h, 3, H, K, BT, BK),
                                  _rows_t(w, bos, T, i_t, i_h, 3, H, K, BT, BK), b_do, b_dd, b_g, g_last, scale, HAS_G, PREC, PRECA, F32_DOTS)
    if STORE_DH0:
        _store_pieces(dh0, i_nh, i_v, b_dh1, b_dh2, b_dh3, b_dh4, K, V, BK, BV)


@triton.jit
def _delta_dqk_kernel(
    q, k, vn, gc, h, do, dh, dvn, dq, dkp, dw, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, PRECA: tl.constexpr,
):
    """One chunk's dq, the score / state part of dk (into dkp) and dW = -dDelta S_n^T (into dw);
    all of K at once, V in blocks; grid (chunks, H)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1))
    b_k = tl.load(p_k, boundary_check=(0, 1))
    b_dq = tl.zeros([BT, BK], dtype=ACC)  # dO S_n^T
    b_dk = tl.zeros([BT, BK], dtype=ACC)  # Delta dS_{n+1}^T
    b_dw = tl.zeros([BT, BK], dtype=ACC)  # -dDelta S_n^T
    b_dA = tl.zeros([BT, BT], dtype=ACC)  # dO Delta^T
    b_dAt = tl.zeros([BT, BT], dtype=ACC)  # Delta dO^T
    for i_v in range(tl.cdiv(V, BV)):
        p_vn = tl.make_block_ptr(vn + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_dd = tl.make_block_ptr(dvn + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_ht = tl.make_block_ptr(h + (i_c * H + i_h).to(tl.int64) * K * V, (V, K), (1, V), (i_v * BV, 0), (BV, BK), (0, 1))
        p_dht = tl.make_block_ptr(dh + (i_c * H + i_h).to(tl.int64) * K * V, (V, K), (1, V), (i_v * BV, 0), (BV, BK), (0, 1))
        b_vn = tl.load(p_vn, boundary_check=(0, 1))
        b_do = tl.load(p_do, boundary_check=(0, 1))
        b_dd = tl.load(p_dd, boundary_check=(0, 1))
        b_ht = tl.load(p_ht, boundary_check=(0, 1))  # S_n^T
        b_dht = tl.load(p_dht, boundary_check=(0, 1))  # dS_{n+1}^T
        b_dA += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        b_dAt += tl.dot(b_vn, tl.trans(b_do), input_precision=PREC)
        b_dq += tl.dot(b_do, b_ht.to(b_do.dtype), input_precision=PREC)
        b_dk += tl.dot(b_vn, b_dht.to(b_vn.dtype), input_precision=PREC)
        b_dw -= tl.dot(b_dd, b_ht, input_precision=PRECA)
    idx = tl.arange(0, BT)
    causal = idx[:, None] >= idx[None, :]
    causal_t = idx[:, None] <= idx[None, :]
    if HAS_G:
        b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
        b_dA *= tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], float("-inf"))) * scale
        b_dAt *= tl.exp(tl.where(causal_t, b_g[None, :] - b_g[:, None], float("-inf"))) * scale
        b_dq = b_dq * (tl.exp(b_g) * scale)[:, None]
        b_dk = b_dk * tl.exp(g_last - b_g)[:, None]
    else:
        b_dA = tl.where(causal, b_dA * scale, 0.0)
        b_dAt = tl.where(causal_t, b_dAt * scale, 0.0)
        b_dq = b_dq * scale
    b_dq += tl.dot(b_dA.to(b_k.dtype), b_k, input_precision=PREC)
    b_dk += tl.dot(b_dAt.to(b_q.dtype), b_q, input_precision=PREC)
    p_dq = tl.make_block_ptr(dq + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_dkp = tl.make_block_ptr(dkp + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_dw = tl.make_block_ptr(dw + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), boundary_check=(0, 1))
    tl.store(p_dkp, b_dk.to(p_dkp.dtype.element_ty), boundary_check=(0, 1))
    tl.store(p_dw, b_dw.to(p_dw.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _wy_bwd_kernel(
    k, v, beta, gc, ainv, w, u, dvn, dw, dkp, dk, dv, dbeta, cu_seqlens, chunk_indices,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PRECA: tl.constexpr,
):
    """Back through the UT transform of one chunk: dk = dkp + the W / A parts, dv and dbeta; K and
    V in blocks; grid (chunks, H)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    idx = tl.arange(0, BT)
    rows = i_t * BT + idx
    base = ainv + (i_c * H + i_h).to(tl.int64) * BT * BT
    b_X = tl.load(tl.make_block_ptr(base, (BT, BT), (BT, 1), (0, 0), (BT, BT), (1, 0)))
    b_Xt = tl.load(tl.make_block_ptr(base, (BT, BT), (1, BT), (0, 0), (BT, BT), (0, 1)))  # X^T
    b_beta = tl.load(beta + (bos + rows) * H + i_h, mask=rows < T, other=0.0).to(ACC)
    if HAS_G:
        b_g, _ = _load_g(gc, bos, T, i_t, i_h, H, BT)
        b_eg = tl.exp(b_g)
    else:
        b_g = tl.zeros([BT], dtype=ACC)
        b_eg = tl.full([BT], 1.0, dtype=ACC)
    # the [BT, BT] tiles live through the loops: dA, dA^T, X, X^T (the decay masks and K K^T are
    # formed after them: fewer registers, ptxas spilled 1.1-1.4 KB per thread with them live)
    b_dA = tl.zeros([BT, BT], dtype=ACC)  # dVb U^T + dKb W^T (= -dA before the mask)
    b_dAt = tl.zeros([BT, BT], dtype=ACC)  # its transpose, U dU^T X + W dW^T X
    b_db = tl.zeros([BT], dtype=ACC)
    for i_v in range(tl.cdiv(V, BV)):
        p_du = tl.make_block_ptr(dvn + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_dut = tl.make_block_ptr(dvn + (bos * H + i_h) * V, (V, T), (1, H * V),
                                  (i_v * BV, i_t * BT), (BV, BT), (0, 1))
        p_u = tl.make_block_ptr(u + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_v = tl.make_block_ptr(v + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_du = tl.load(p_du, boundary_check=(0, 1)).to(ACC)
        b_dut = tl.load(p_dut, boundary_check=(0, 1)).to(ACC)
        b_u = tl.load(p_u, boundary_check=(0, 1)).to(ACC)
        b_v = tl.load(p_v, boundary_check=(0, 1)).to(ACC)
        b_dvb = tl.dot(b_Xt, b_du, input_precision=PRECA)  # dVb = X^T dU
        b_dv = b_dvb * b_beta[:, None]
        p_dv = tl.make_block_ptr(dv + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), boundary_check=(0, 1))
        b_db += tl.sum(b_v * b_dvb, axis=1)
        b_dA += tl.dot(b_dvb, tl.trans(b_u), input_precision=PRECA)
        b_dAt += tl.dot(tl.dot(b_u, b_dut, input_precision=PRECA), b_X, input_precision=PRECA)
    for i_k in range(tl.cdiv(K, BK)):
        p_dw = tl.make_block_ptr(dw + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                 (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_dwt = tl.make_block_ptr(dw + (bos * H + i_h) * K, (K, T), (1, H * K),
                                  (i_k * BK, i_t * BT), (BK, BT), (0, 1))
        p_w = tl.make_block_ptr(w + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_dw = tl.load(p_dw, boundary_check=(0, 1))
        b_dwt = tl.load(p_dwt, boundary_check=(0, 1))
        b_w = tl.load(p_w, boundary_check=(0, 1)).to(ACC)
        b_k = tl.load(p_k, boundary_check=(0, 1)).to(ACC)
        b_dkb = tl.dot(b_Xt, b_dw, input_precision=PRECA)  # dKb = X^T dW
        b_db += tl.sum(b_k * b_eg[:, None] * b_dkb, axis=1)
        b_dA += tl.dot(b_dkb, tl.trans(b_w), input_precision=PRECA)
        b_dAt += tl.dot(tl.dot(b_w, b_dwt, input_precision=PRECA), b_X, input_precision=PRECA)
    strict = idx[:, None] > idx[None, :]
    strict_t = idx[:, None] < idx[None, :]  # [j, i]: i > j
    if HAS_G:  # Gam and Gam^T, the decay masks of A and A^T
        b_dA = -b_dA * tl.exp(tl.where(strict, b_g[:, None] - b_g[None, :], float("-inf")))
        b_dAt = -b_dAt * tl.exp(tl.where(strict_t, b_g[None, :] - b_g[:, None], float("-inf")))
    else:
        b_dA = tl.where(strict, -b_dA, 0.0)
        b_dAt = tl.where(strict_t, -b_dAt, 0.0)
    # b_dA: dL/dA ⊙ Gam on i > j (A_ij = beta_i (k_i . k_j) Gam_ij)
    b_M = b_dA * b_beta[:, None]  # dL/d(k_i . k_j)
    b_Mt = b_dAt * b_beta[None, :]
    b_kscale = b_beta * b_eg
    for i_k in range(tl.cdiv(K, BK)):
        p_dw = tl.make_block_ptr(dw + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                 (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        p_dkp = tl.make_block_ptr(dkp + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                  (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        b_dw = tl.load(p_dw, boundary_check=(0, 1))
        b_k = tl.load(p_k, boundary_check=(0, 1)).to(ACC)
        b_dk = tl.load(p_dkp, boundary_check=(0, 1))
        b_dk += tl.dot(b_Xt, b_dw, input_precision=PRECA) * b_kscale[:, None]
        b_db += tl.sum(b_dA * tl.dot(b_k, tl.trans(b_k), input_precision=PRECA), axis=1)  # K K^T part
        b_dk += tl.dot(b_M, b_k, input_precision=PRECA)
        b_dk += tl.dot(b_Mt, b_k, input_precision=PRECA)
        p_dk = tl.make_block_ptr(dk + (bos * H + i_h) * K, (T, K), (H * K, 1),
                                 (i_t * BT, i_k * BK), (BT, BK), (1, 0))
        tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), boundary_check=(0, 1))
    tl.store(dbeta + (bos + rows) * H + i_h, b_db, mask=rows < T)


@triton.jit
def _delta_dg_kernel(
    q, k, vn, do, dvn, h, dh, ainv, beta, gc, dg, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, PRECA: tl.constexpr,
):
    """dL/dg of every token of one chunk, directly (no reverse sum); grid (chunks, H).

    dg_i = e^{g_i} <(I - beta_i k_i k_i^T) S_{i-1}, dS_i> (S_i, dS_i: the state after token i and
    its gradient), written with the chunk's quantities (derived here; S = S_n, dS' = dS_{n+1},
    Delta = vn, dd = dDelta, dVb = X^T dd, A = StrictTril(diag(beta) (K K^T ⊙ Gam))):
        dg_i = sum_{t>=i} scale e^{G_t} (q_t S) . do_t + e^{G_last} <S, dS'>
             - sum_{m>i} beta_m e^{G_m} (k_m S) . dVb_m + sum_{j<i} e^{G_last - G_j} (k_j dS') . Delta_j
             + sum_{t>=i>j} P_tj - sum_{m>i>j} A_mj (dVb_m . Delta_j) - beta_i Bg_i . dVb_i
    with P = scale (Q K^T ⊙ Gam) ⊙ (dO Delta^T) (t >= j) and
    Bg = (e^G ⊙ K) S + StrictTril(K K^T ⊙ Gam) Delta (= e^{g_i} S_{i-1}^T k_i per row). Every term
    carries the decays between its tokens, so nothing cancels: with harsh gates this is exact to the
    rounding of its terms, where q . dq - v . dv summed in reverse lost all precision.
    """
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    idx = tl.arange(0, BT)
    rows = i_t * BT + idx
    b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
    b_eg = tl.exp(b_g)
    b_beta = tl.load(beta + (bos + rows) * H + i_h, mask=rows < T, other=0.0).to(ACC)
    p_q = tl.make_block_ptr(q + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
    b_q = tl.load(p_q, boundary_check=(0, 1))
    b_k = tl.load(p_k, boundary_check=(0, 1))
    base = ainv + (i_c * H + i_h).to(tl.int64) * BT * BT
    b_Xt = tl.load(tl.make_block_ptr(base, (BT, BT), (1, BT), (0, 0), (BT, BT), (0, 1)))  # X^T
    # live through the V loop: X^T and two [BT, BT] sums; the decay masks are formed after it
    b_a = tl.zeros([BT], dtype=ACC)  # (q_t S) . do_t
    b_c = tl.zeros([BT], dtype=ACC)  # (k_m S) . dVb_m
    b_e = tl.zeros([BT], dtype=ACC)  # (k_j dS') . Delta_j
    b_SdS = tl.zeros([BK], dtype=ACC)  # <S, dS'> by rows of K
    b_dOD = tl.zeros([BT, BT], dtype=ACC)  # dO Delta^T
    b_Z = tl.zeros([BT, BT], dtype=ACC)  # dVb Delta^T
    for i_v in range(tl.cdiv(V, BV)):
        p_do = tl.make_block_ptr(do + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_vn = tl.make_block_ptr(vn + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_dd = tl.make_block_ptr(dvn + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        p_h = tl.make_block_ptr(h + (i_c * H + i_h).to(tl.int64) * K * V, (K, V), (V, 1), (0, i_v * BV), (BK, BV), (1, 0))
        p_dh = tl.make_block_ptr(dh + (i_c * H + i_h).to(tl.int64) * K * V, (K, V), (V, 1), (0, i_v * BV), (BK, BV), (1, 0))
        b_do = tl.load(p_do, boundary_check=(0, 1))
        b_D = tl.load(p_vn, boundary_check=(0, 1))  # Delta
        b_dd = tl.load(p_dd, boundary_check=(0, 1))
        b_S = tl.load(p_h, boundary_check=(0, 1))
        b_dS = tl.load(p_dh, boundary_check=(0, 1))
        b_dvb = tl.dot(b_Xt, b_dd, input_precision=PRECA)  # dVb = X^T dDelta
        b_kS = tl.dot(b_k, b_S.to(b_k.dtype), input_precision=PREC)  # rows k_m S
        b_a += tl.sum(tl.dot(b_q, b_S.to(b_q.dtype), input_precision=PREC) * b_do.to(ACC), axis=1)
        b_c += tl.sum(b_kS * b_dvb, axis=1)
        b_e += tl.sum(tl.dot(b_k, b_dS.to(b_k.dtype), input_precision=PREC) * b_D.to(ACC), axis=1)
        b_SdS += tl.sum(b_S.to(ACC) * b_dS.to(ACC), axis=1)
        b_dOD += tl.dot(b_do, tl.trans(b_D), input_precision=PREC)
        b_Z += tl.dot(b_dvb, tl.trans(b_D.to(ACC)), input_precision=PRECA)
    causal = idx[:, None] >= idx[None, :]
    strict = idx[:, None] > idx[None, :]
    b_Gam = tl.exp(tl.where(causal, b_g[:, None] - b_g[None, :], float("-inf")))
    b_KKs = tl.where(strict, tl.dot(b_k, tl.trans(b_k), input_precision=PREC) * b_Gam, 0.0)
    # Bg_i . dVb_i = e^{G_i} (k_i S) . dVb_i + sum_j KKs_ij Delta_j . dVb_i, the latter rowsum(KKs ⊙ Z)
    b_bg = tl.sum(b_KKs * b_Z, axis=1)
    b_f = _straddle_sum(b_KKs * b_Z * b_beta[:, None], strict)  # A ⊙ Z, rows m > i
    b_P = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * b_Gam * b_dOD * scale
    b_d = _straddle_sum(b_P, causal)  # rows t >= i
    b_a = b_a * b_eg * scale
    b_bg += b_c * b_eg
    b_c = b_c * b_beta * b_eg
    b_e = b_e * tl.exp(g_last - b_g)
    b_dg = _sum_after(b_a) + b_a  # sum_{t >= i}
    b_dg += tl.exp(g_last) * tl.sum(b_SdS, axis=0)
    b_dg -= _sum_after(b_c)
    b_dg += _sum_before(b_e)
    b_dg += b_d - b_f - b_beta * b_bg
    tl.store(dg + (bos + rows) * H + i_h, b_dg, mask=rows < T)


# ---------------------------------------------------------------------------------------------
# host side

CHUNK_SIZES = (16, 32, 64)  # the inverse handles chunks of up to four 16 x 16 blocks
KERNEL_CHUNK = 64


# The products of _delta_dh_kernel that take fp32 operands (TF32 dots) in bf16 / fp16 when K > 64
# (its F32_DOTS bit mask: 1 P^T dO, 2 K dS, 4 W^T dDelta). With bf16 operands throughout, its dS and
# dDelta were wrong on an H100 (Triton 3.6) for K = 128 / 256, relative error 0.2-1.7, and not the
# same from run to run (0.85 / 1.13 / 1.66 for one input): a miscompile, not rounding. Bisected on
# the GPU (benchmarks/scripts/bisect_delta_grads.py, 2026-12-07, session 15, over these three and
# three more products since dropped: K Q^T, Q^T dO, W^T through registers): no single product in
# fp32 mended all cases (K dS and K Q^T mended the gated one only), 1 | 2 | 4 and all six did, to
# 5.7e-3 (bf16 rounding), and the delta-rule GPU tests (every gradient vs float64, K up to 256)
# passed. K = 64 was right without it and keeps bf16 operands.
HALF_DH_F32_DOTS = 7

# dDelta's intra-chunk part, scale (Q K^T ⊙ Gam)^T dO, by a kernel parallel over the chunks
# (``_delta_dv_intra_kernel``) before the reverse state pass, which then only adds
# (K ⊙ e^{G_last - G}) dS: the chunk's K Q^T products and their product with dO leave the pass's
# sequential path (as flash-linear-attention's chunk_bwd_dv_local). The delta rule's forward +
# backward was 0.73x fla's at 64k on an H100 but 1.86x at 8k (session 17): the sequential pass is
# what grows. Exact in the interpreter. On an H100 (session 21, flag_ab.py, 64k) it gave nothing on
# DeltaNet (forward + backward 11.79 -> 11.86 ms) and 1.04x on Gated DeltaNet (18.01 -> 17.30): off.
DH_INTRA_OUTSIDE = False


def _preca(dtype: torch.dtype) -> str:
    """tl.dot's precision for the accumulation-dtype products (inverse, W, U, UT backward): TF32
    for half inputs (more precise than the inputs), else as ``_prec``."""
    return "tf32" if dtype in (torch.float16, torch.bfloat16) else _prec(dtype)


def _blocks(K: int, V: int) -> tuple[int, int, int, int]:
    """(BK holding all of K, BV for the whole-K state kernels, BK and BV for the blocked ones)."""
    BKf = max(16, triton.next_power_of_2(K))
    BVp = max(16, triton.next_power_of_2(V))
    return BKf, min(BVp, max(16, 4096 // BKf)), min(64, BKf), min(64, BVp)


# The training passes (the forward that keeps fp32 states for the backward, and the backward's
# _delta_dh_kernel) at the staged settings of ``_pass_stages``. _delta_dh_kernel has a history of
# Hopper miscompiles at K > 64 in half precision (``HALF_DH_F32_DOTS``, found at 1 stage), so the
# staging waited for the kernel-matches tests (every gradient against float64): they passed with it
# on 2026-12-07 (session 17; DeltaNet float32 + bf16 on an H200, Gated DeltaNet bf16 and float32 at
# K = 64 / 128 on an H100). With it, at T = 64k on an H100 (B=1 H=16 K=V=128 bf16), the DeltaNet
# forward + backward took 11.74 ms (18.21 at 1 stage, session 16), Gated DeltaNet's 18.03 (23.96).
# False runs every pass but the tuned inference forward at 1 stage again.
STAGED_TRAINING_PASSES = True

# The inverse's 16 x 16 diagonal blocks by element-wise forward substitution in fp32
# (``_diag_block_inverse``: 15 dependent row steps on [C/16, 16, 16]) instead of 15 dependent
# masked [C, C] products (TF32 for half inputs); exact either way in the interpreter. Off until
# timed on a GPU: the UT transform (``_wy_fwd_kernel``) was Gated DeltaNet's second-largest
# forward kernel on an H100 (377 us of 979 at 16k, fla's two UT kernels 210; session 19). With
# HALF_WU, on an H100 (session 21, flag_ab.py, 64k): Gated DeltaNet's forward 3.85 -> 3.42 ms,
# DeltaNet's 2.94 -> 2.42 (outputs within 8e-3 of the default's); off until all their GPU tests
# (test_ut_transform_variants_match_recurrence) have run: 8 passed before that call's time ran out.
VECTOR_DIAG_INVERSE = False

# W and U of the UT transform by half-precision dots for half inputs: X and the beta (e^G)-scaled
# K / V rounded to the input dtype (as flash-linear-attention's recompute_w_u does), instead of
# TF32 dots on fp32 operands (half the operand bytes, twice the tensor-core rate). Off until tested
# on a GPU (timed with VECTOR_DIAG_INVERSE in session 21, above).
HALF_WU = False


def _half_wu(dtype: torch.dtype) -> bool:
    """``HALF_WU`` where it applies: half inputs."""
    return HALF_WU and dtype in (torch.float16, torch.bfloat16)


def _pass_stages(dtype: torch.dtype, K: int, train: bool) -> int:
    """num_stages of the state passes (``_delta_h_kernel``, ``_delta_dh_kernel``): the loads of the
    next chunk's tiles overlap the current chunk's products. 3 for half inputs up to K = 128, 2 for
    float32 there, else 1. Shared memory at K = V = 128 on sm_90: 3 stages of the backward pass take
    190 KiB in bf16 and 305 KiB in fp32, of the 227 KiB an H100 has (tests/ops/test_ptxas_spills.py).
    Timed on an H100 (2026-12-07, Gated DeltaNet's bf16 inference forward, K = V = 128, H = 16):
    with the forward pass at 1 / 2 / 3 stages the op took 0.427 / 0.289 / 0.272 ms at T = 4k and
    6.37 / 4.10 / 3.79 ms at T = 64k, with bit-identical outputs. ``STAGED_TRAINING_PASSES`` False
    stages only that case (the inference forward, half inputs, 64 < K <= 128)."""
    half = dtype in (torch.float16, torch.bfloat16)
    tuned = half and not train and K > 64
    if K > 128 or dtype == torch.float64 or not (STAGED_TRAINING_PASSES or tuned):
        return 1
    return 3 if half else 2


def _meta(q: Tensor) -> dict:
    _, ACC = _acc(q.dtype)
    return {"ACC": ACC, "PREC": _prec(q.dtype)}


def _forward(q, k, v, beta, g, h0, scale, want_ht, cu, BT, train: bool):
    """The forward kernels. train: keep what the backward reads (X, and the chunk states S_n in
    fp32, which dW = -dDelta S_n^T and dg read unrounded); else S_n is kept in the input dtype
    (``_state_dtype``: the output pass rounds it to that before its product anyway, so o is the
    same) and X is not stored, which halves the state traffic of an inference forward.
    Returns o, the final state and the tensors the backward saves (None when not train)."""
    offsets, indices, NC = chunk_layout(cu, BT)
    _, _, H, K = q.shape
    V = v.shape[-1]
    N = cu.numel() - 1
    _, BVs, BK, BV = _blocks(K, V)
    acc, _ = _acc(q.dtype)
    meta = _meta(q)
    has_g = g is not None
    gc = None
    if has_g:
        gc = torch.empty(g.shape, dtype=acc, device=g.device)
        _chunk_cumsum_kernel[(NC, H)](g, gc, cu, indices, H=H, BT=BT)
    ainv = torch.empty(NC, H, BT, BT, dtype=acc, device=q.device) if train else None
    w, u = torch.empty_like(k), torch.empty_like(v)
    _wy_fwd_kernel[(NC, H)](
        k, v, beta, gc if has_g else q, ainv if train else q, w, u, cu, indices,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_G=has_g, PRECA=_preca(q.dtype), STORE_X=train, VEC_INV=VECTOR_DIAG_INVERSE,
        HALF_WU=_half_wu(q.dtype), **meta,
        **launch_options("delta.wy_fwd", num_warps=4, num_stages=1),
    )
    h = q.new_empty(NC, H, K, V, dtype=acc if train else _state_dtype(q.dtype))
    vn = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=acc) if want_ht else None
    # BV: a tunable (the pass is sequential over chunks, so its programs are V/BV x N x H: 64 at
    # B = 1, H = 16, V = 128, BV = 32, on 132 SMs; BV 16 doubles them)
    opts = launch_options("delta.delta_h", num_warps=4, num_stages=_pass_stages(q.dtype, K, train), BV=BVs)
    BVh = opts.pop("BV")
    _delta_h_kernel[(triton.cdiv(V, BVh), N * H)](
        k, w, u, gc if has_g else q, h, vn, h0 if h0 is not None else q, ht if want_ht else q,
        cu, offsets, H=H, K=K, V=V, BT=BT, BK=BK, BV=BVh, HAS_G=has_g,
        USE_H0=h0 is not None, STORE_HT=want_ht, GATE_D=triton_scalar_decay.GATE_ON_DELTA, **meta, **opts,
    )
    o = torch.empty_like(v)
    # BV: a tunable up to 128 (all of V: the chunk's Q K^T formed once instead of V/BV times)
    opts = launch_options("delta.fwd_o", num_warps=4, num_stages=3, BV=BV)
    BVo = opts.pop("BV")
    _fwd_o_kernel[(triton.cdiv(V, BVo), NC, H)](  # the scalar-decay outputs, v = Delta
        q, k, vn, gc if has_g else q, h, o, cu, indices, scale,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BVo, HAS_G=has_g, **meta, **opts,
    )
    saved = (gc, ainv, w, u, h, vn, offsets, indices, NC) if train else None
    return o, ht, saved


class _DeltaRuleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, scale, want_ht, cu, BT):
        o, ht, (gc, ainv, w, u, h, vn, offsets, indices, NC) = _forward(
            q, k, v, beta, g, h0, scale, want_ht, cu, BT, train=True)
        ctx.save_for_backward(q, k, v, beta, gc, h0, ainv, w, u, h, vn, cu, offsets, indices)
        ctx.meta = (scale, BT, NC, g is not None and g.requires_grad, g.dtype if g is not None else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, gc, h0, ainv, w, u, h, vn, cu, offsets, indices = ctx.saved_tensors
        scale, BT, NC, g_grad, g_dtype = ctx.meta
        _, _, H, K = q.shape
        V = v.shape[-1]
        N = cu.numel() - 1
        BKf, BVs, BK, BV = _blocks(K, V)
        acc, _ = _acc(q.dtype)
        meta = _meta(q)
        has_g = gc is not None
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        dh = torch.empty_like(h)  # fp32: _delta_dg_kernel reads it unrounded
        dvn = torch.empty(v.shape, dtype=acc, device=v.device)  # dDelta = dU
        dh0 = torch.empty(N, H, K, V, dtype=acc, device=q.device) if h0 is not None else None
        half = q.dtype in (torch.float16, torch.bfloat16)
        # BV: a tunable, as the forward state pass's (V/BV x N x H sequential programs)
        opts = launch_options("delta.delta_dh", num_warps=4, num_stages=_pass_stages(q.dtype, K, True),
                              F32_DOTS=HALF_DH_F32_DOTS if half and K > BK else 0, BV=BVs)
        BVd = opts.pop("BV")
        if DH_INTRA_OUTSIDE:  # dDelta's intra-chunk part first, in parallel over the chunks
            _delta_dv_intra_kernel[(NC, H)](
                q, k, gc if has_g else q, do, dvn, cu, indices, scale,
                H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_G=has_g, PRECA=_preca(q.dtype), F32_DOTS=opts["F32_DOTS"],
                **meta, **launch_options("delta.dv_intra", num_warps=4, num_stages=2),
            )
        _delta_dh_kernel[(triton.cdiv(V, BVd), N * H)](
            q, k, w, gc if has_g else q, do, dh, dvn, dht if dht is not None else q,
            dh0 if dh0 is not None else q, cu, offsets, scale,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BVd, HAS_G=has_g, USE_DHT=dht is not None,
            STORE_DH0=dh0 is not None, PRECA=_preca(q.dtype), INTRA_IN=DH_INTRA_OUTSIDE, **meta, **opts,
        )
        dq = torch.empty_like(q)
        dkp = torch.empty(k.shape, dtype=acc, device=k.device)
        dw = torch.empty(k.shape, dtype=acc, device=k.device)
        _delta_dqk_kernel[(NC, H)](
            q, k, vn, gc if has_g else q, h, do, dh, dvn, dq, dkp, dw, cu, indices, scale,
            H=H, K=K, V=V, BT=BT, BK=BKf, BV=min(BV, 32), HAS_G=has_g, PRECA=_preca(q.dtype), **meta,
            **launch_options("delta.delta_dqk", num_warps=8 if BKf >= 128 else 4, num_stages=1),
        )
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        dbeta = torch.empty(beta.shape, dtype=acc, device=beta.device)
        _wy_bwd_kernel[(NC, H)](
            k, v, beta, gc if has_g else q, ainv, w, u, dvn, dw, dkp, dk, dv, dbeta, cu, indices,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, HAS_G=has_g, ACC=meta["ACC"], PRECA=_preca(q.dtype),
            **launch_options("delta.wy_bwd", num_warps=4, num_stages=1),
        )
        dg = None
        if g_grad:  # directly per token (no reverse sum, nothing cancels: _delta_dg_kernel)
            dg = torch.empty(beta.shape, dtype=acc, device=q.device)
            _delta_dg_kernel[(NC, H)](
                q, k, vn, do, dvn, h, dh, ainv, beta, gc, dg, cu, indices, scale,
                H=H, K=K, V=V, BT=BT, BK=BKf, BV=BVs, PRECA=_preca(q.dtype), **meta,
                **launch_options("delta.dg", num_warps=8, num_stages=1),  # ptxas: no spills (4 warps: 112 B)
            )
            dg = dg.to(g_dtype)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dq, dk, dv, dbeta.to(beta.dtype), dg, dh0, None, None, None, None


def delta_rule_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    *,
    scale: float = 1.0,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = KERNEL_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """The chunked (gated) delta rule on the GPU (inputs already checked by the caller).

    q, k: [B, T, H, K] (k unit-norm, K <= 256); v: [B, T, H, V]; beta: [B, T, H]; g: [B, T, H]
    log decay (<= 0) or None (DeltaNet); scale: applied to q; initial_state: [N, H, K, V]
    (N sequences); cu_seqlens: [N+1] int offsets into T for packed variable lengths (B must be 1)
    or None; chunk_size: 16, 32 or 64 (the result does not depend on it). Returns o [B, T, H, V]
    (q's dtype) and the final state [N, H, K, V] (float32; float64 for float64 inputs) or None.
    """
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"delta_rule_chunk: chunk_size must be one of {CHUNK_SIZES}, got {chunk_size}")
    B, T, H, _ = q.shape
    acc, _ = _acc(q.dtype)
    cu, flat = packed_sequences(B, T, q.device, cu_seqlens)
    q, k, v = (flat(t).contiguous() for t in (q, k, v))
    beta = flat(beta).to(acc).contiguous()
    if g is not None:
        g = flat(g).to(acc).contiguous()
    h0 = initial_state.to(acc).contiguous() if initial_state is not None else None
    if grad_wanted(q, k, v, beta, g, h0):
        o, ht = _DeltaRuleFn.apply(q, k, v, beta, g, h0, float(scale), output_final_state, cu, chunk_size)
    else:
        o, ht, _ = _forward(q, k, v, beta, g, h0, float(scale), output_final_state, cu, chunk_size, train=False)
    return o.reshape(B, T, H, v.shape[-1]), ht

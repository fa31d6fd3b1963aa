"""The chunk levels of log-linear (Gated) DeltaNet with a backward: one walk per level, forward and
reverse, in Triton, differentiable in its per-chunk inputs (``delta_levels``).

``triton_log_linear_delta`` walks every chunk level once for an inference forward. For training,
``ops/log_linear/triton.py`` otherwise runs M copies of the whole base (its UT transform, state
and output passes, forward and backward) on level-masked values. Here the per-chunk pieces are
formed once, outside (differentiable, ``log_linear.triton._delta_training``): the source keys
K̂ = K ⊙ e^{G_last - G}, W = X diag(beta)(e^G ⊙ K), U = X diag(beta) V, the effective queries
Q̃ = (Q ⊙ e^G) - (Q K^T ⊙ Γ)_{i>=j} W and the chunk decays a_n = e^{G_last} (GDN §3.3); and each
level m = 1..M (Guo et al. 2025, §3.1) walks the chunks n of every sequence:

    S_n = 0 where n is a multiple of 2^m (the level's blocks)
    Delta_n = [n a source] U_n - W_n S_n          (source: bit m-1 of n is 0; else a reader)
    o^(m)_n = [n a reader] Q̃_n S_n                 (unscaled: λ^(c+m) is applied outside)
    S_{n+1} = a_n S_n + K̂_n^T Delta_n

Backward (derived here), with dS_{n+1} the gradient of the state after chunk n (0 where n + 1
starts a block: that state is never read) and do^(m) the gradient of o^(m):
    dDelta_n = K̂_n dS_{n+1}
    dS_n     = a_n dS_{n+1} - W_n^T dDelta_n + [reader] Q̃_n^T do_n          (reverse walk)
    dW_n  = -sum_m dDelta_n S_n^T,     dQ̃_n = sum_m [reader] do_n S_n^T,     dU_n = sum_m [source] dDelta_n
    dK̂_n  = sum_m Delta_n dS_{n+1}^T,  da_n = sum_m <S_n, dS_{n+1}>
Kernels: ``_levels_fwd_kernel`` (S_n of every level and chunk into hs, Delta into dl, o^(m) into
om; grid V/BV x M x N*H), ``_levels_dh_kernel`` (the reverse walk: dS_{n+1} into dhs, dDelta into
ddl), ``_levels_grads_kernel`` (per chunk and key block, every level: dW, dQ̃, dK̂, da; grid K/BK x
chunks x H); dU is a masked sum over levels in PyTorch. The states are kept in fp32 (fp64 for
fp64): M x chunks x H x K x V of them, and as many of their gradients (2 x 2.1 GB at T = 16k,
H = 16, K = V = 128). The reverse walk's and the gradient kernel's products take fp32 operands
(TF32 for half inputs), away from the delta rule's bf16 backward faults on Hopper
(``triton_delta.HALF_DH_F32_DOTS``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from longctx.ops.common import triton_log_linear
from longctx.ops.common.triton_delta import _blocks, _preca
from longctx.ops.common.triton_launch import launch_options
from longctx.ops.common.triton_log_linear import _walk_segment, walk_list
from longctx.ops.common.triton_log_linear_delta import _pieces_dot
from longctx.ops.common.triton_scalar_decay import (
    _acc,
    _chunk,
    _cols,
    _init_pieces,
    _prec,
    _rows_t,
    _sequence,
    _store_pieces,
    chunk_layout,
)


@triton.jit
def _rows_block(x, bos, T, i_t, i_h, i_v, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr):
    """Block pointer to chunk i_t's rows and value block i_v of a [T, H, V] slab."""
    return tl.make_block_ptr(x + (bos * H + i_h) * V, (T, V), (H * V, 1), (i_t * BT, i_v * BV), (BT, BV), (1, 0))


@triton.jit
def _piece_fwd(b_h, khat, b_d, a, bos, T, i_t, i_h, p, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
               BK: tl.constexpr, PREC: tl.constexpr):
    """One piece of rows of S after the chunk: a S + K̂^T Delta."""
    b_kt = _rows_t(khat, bos, T, i_t, i_h, p, H, K, BT, BK)  # [BK, BT]
    return b_h * a + tl.dot(b_kt, b_d.to(b_kt.dtype), input_precision=PREC)


@triton.jit
def _levels_fwd_kernel(
    khat, w, u, qt, decay, om, dl, hs, cu_seqlens, chunk_offsets, segments, TT, NCT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """Level m of one sequence and head over one segment of its chunks (``walk_segments``), value
    block i_v: S_n before every chunk into hs [M, NCT, H, K, V], Delta into dl [M, TT, H, V], Q̃ S
    at reader chunks (0 at sources) into om [M, TT, H, V] (module docstring); grid (V/BV, segments * H)."""
    i_v = tl.program_id(0)
    i_h, i_n, i_m, t0, t1 = _walk_segment(segments, tl.program_id(1), H)
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    m = i_m + 1
    b_h1, b_h2, b_h3, b_h4 = _init_pieces(hs, 0, i_v, False, ACC, K, V, BK, BV)
    om_m = om + i_m.to(tl.int64) * TT * H * V
    dl_m = dl + i_m.to(tl.int64) * TT * H * V
    hs_m = hs + i_m.to(tl.int64) * NCT * H * K * V
    for i_t in range(t0, tl.minimum(t1, NT)):
        if i_t % (1 << m) == 0:  # a new block of the level: its state starts empty
            b_h1, b_h2, b_h3, b_h4 = b_h1 * 0.0, b_h2 * 0.0, b_h3 * 0.0, b_h4 * 0.0
        _store_pieces(hs_m, (boh + i_t) * H + i_h, i_v, b_h1, b_h2, b_h3, b_h4, K, V, BK, BV)
        b_ws = _pieces_dot(w, bos, T, i_t, i_h, b_h1, b_h2, b_h3, b_h4, H, K, BT, BK, PREC)  # W S
        p_o = _rows_block(om_m, bos, T, i_t, i_h, i_v, H, V, BT, BV)
        if ((i_t >> (m - 1)) & 1) == 1:  # a reader
            b_o = _pieces_dot(qt, bos, T, i_t, i_h, b_h1, b_h2, b_h3, b_h4, H, K, BT, BK, PREC)
            tl.store(p_o, b_o.to(p_o.dtype.element_ty), boundary_check=(0, 1))
            b_d = -b_ws
        else:
            tl.store(p_o, tl.zeros([BT, BV], dtype=ACC).to(p_o.dtype.element_ty), boundary_check=(0, 1))
            p_u = _rows_block(u, bos, T, i_t, i_h, i_v, H, V, BT, BV)
            b_d = tl.load(p_u, boundary_check=(0, 1), padding_option="zero").to(ACC) - b_ws
        p_d = _rows_block(dl_m, bos, T, i_t, i_h, i_v, H, V, BT, BV)
        tl.store(p_d, b_d.to(p_d.dtype.element_ty), boundary_check=(0, 1))
        a = tl.load(decay + (boh + i_t) * H + i_h).to(ACC)
        b_h1 = _piece_fwd(b_h1, khat, b_d, a, bos, T, i_t, i_h, 0, H, K, BT, BK, PREC)
        if K > BK:
            b_h2 = _piece_fwd(b_h2, khat, b_d, a, bos, T, i_t, i_h, 1, H, K, BT, BK, PREC)
        if K > 2 * BK:
            b_h3 = _piece_fwd(b_h3, khat, b_d, a, bos, T, i_t, i_h, 2, H, K, BT, BK, PREC)
        if K > 3 * BK:
            b_h4 = _piece_fwd(b_h4, khat, b_d, a, bos, T, i_t, i_h, 3, H, K, BT, BK, PREC)


@triton.jit
def _piece_bwd(b_dh, w, qt, b_dd, b_do, a, reader, bos, T, i_t, i_h, p, H: tl.constexpr, K: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr, PRECA: tl.constexpr):
    """One piece of rows of dS before the chunk: a dS - W^T dDelta + [reader] Q̃^T do (fp32 operands)."""
    b_dh = b_dh * a - tl.dot(_rows_t(w, bos, T, i_t, i_h, p, H, K, BT, BK).to(ACC), b_dd, input_precision=PRECA)
    if reader:
        b_dh += tl.dot(_rows_t(qt, bos, T, i_t, i_h, p, H, K, BT, BK).to(ACC), b_do, input_precision=PRECA)
    return b_dh


@triton.jit
def _levels_dh_kernel(
    khat, w, qt, decay, dom, ddl, dhs, cu_seqlens, chunk_offsets, segments, TT, NCT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PRECA: tl.constexpr,
):
    """The reverse walk of level m over one segment of a sequence's chunks (``walk_segments``; one
    head, value block i_v): dS_{n+1} into dhs [M, NCT, H, K, V] and dDelta_n into ddl [M, TT, H, V],
    from do = dom [M, TT, H, V] (module docstring); grid (V/BV, segments * H)."""
    i_v = tl.program_id(0)
    i_h, i_n, i_m, t0, t1 = _walk_segment(segments, tl.program_id(1), H)
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    m = i_m + 1
    b_h1, b_h2, b_h3, b_h4 = _init_pieces(dhs, 0, i_v, False, ACC, K, V, BK, BV)
    dom_m = dom + i_m.to(tl.int64) * TT * H * V
    ddl_m = ddl + i_m.to(tl.int64) * TT * H * V
    dhs_m = dhs + i_m.to(tl.int64) * NCT * H * K * V
    t1 = tl.minimum(t1, NT)
    for j in range(t1 - t0):
        i_t = t1 - 1 - j
        if (i_t + 1) % (1 << m) == 0:  # the state after this chunk starts a block: never read
            b_h1, b_h2, b_h3, b_h4 = b_h1 * 0.0, b_h2 * 0.0, b_h3 * 0.0, b_h4 * 0.0
        _store_pieces(dhs_m, (boh + i_t) * H + i_h, i_v, b_h1, b_h2, b_h3, b_h4, K, V, BK, BV)
        # dDelta = K̂ dS_{n+1}, summed over the pieces (fp32 operands: dS unrounded)
        b_dd = tl.dot(_cols(khat, bos, T, i_t, i_h, 0, H, K, BT, BK).to(ACC), b_h1, input_precision=PRECA)
        if K > BK:
            b_dd += tl.dot(_cols(khat, bos, T, i_t, i_h, 1, H, K, BT, BK).to(ACC), b_h2, input_precision=PRECA)
        if K > 2 * BK:
            b_dd += tl.dot(_cols(khat, bos, T, i_t, i_h, 2, H, K, BT, BK).to(ACC), b_h3, input_precision=PRECA)
        if K > 3 * BK:
            b_dd += tl.dot(_cols(khat, bos, T, i_t, i_h, 3, H, K, BT, BK).to(ACC), b_h4, input_precision=PRECA)
        p_dd = _rows_block(ddl_m, bos, T, i_t, i_h, i_v, H, V, BT, BV)
        tl.store(p_dd, b_dd.to(p_dd.dtype.element_ty), boundary_check=(0, 1))
        reader = ((i_t >> (m - 1)) & 1) == 1
        b_do = tl.load(_rows_block(dom_m, bos, T, i_t, i_h, i_v, H, V, BT, BV), boundary_check=(0, 1),
                       padding_option="zero").to(ACC)
        a = tl.load(decay + (boh + i_t) * H + i_h).to(ACC)
        b_h1 = _piece_bwd(b_h1, w, qt, b_dd, b_do, a, reader, bos, T, i_t, i_h, 0, H, K, BT, BK, ACC, PRECA)
        if K > BK:
            b_h2 = _piece_bwd(b_h2, w, qt, b_dd, b_do, a, reader, bos, T, i_t, i_h, 1, H, K, BT, BK, ACC, PRECA)
        if K > 2 * BK:
            b_h3 = _piece_bwd(b_h3, w, qt, b_dd, b_do, a, reader, bos, T, i_t, i_h, 2, H, K, BT, BK, ACC, PRECA)
        if K > 3 * BK:
            b_h4 = _piece_bwd(b_h4, w, qt, b_dd, b_do, a, reader, bos, T, i_t, i_h, 3, H, K, BT, BK, ACC, PRECA)


@triton.jit
def _state_t(x, i_s, i_k, i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Key block i_k and value block i_v of state i_s of x [.., K, V], loaded transposed: [BV, BK]."""
    p = tl.make_block_ptr(x + i_s.to(tl.int64) * K * V, (V, K), (1, V), (i_v * BV, i_k * BK), (BV, BK), (0, 1))
    return tl.load(p, boundary_check=(0, 1), padding_option="zero")


@triton.jit
def _store_rows(x, b, bos, T, i_t, i_h, i_k, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    p = tl.make_block_ptr(x + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, i_k * BK), (BT, BK), (1, 0))
    tl.store(p, b.to(p.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _levels_grads_kernel(
    dl, ddl, dom, hs, dhs, dw, dqt, dkhat, ddecay, cu_seqlens, chunk_indices, TT, NCT, M,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, ACC: tl.constexpr, PRECA: tl.constexpr,
):
    """One chunk, key block i_k, every level: dW = -sum dDelta S^T, dQ̃ = sum [reader] do S^T,
    dK̂ = sum Delta dS_{n+1}^T (into dw, dqt, dkhat [TT, H, K]) and this key block's share of
    da = sum <S, dS_{n+1}> (into ddecay [K/BK, NCT, H]); grid (K/BK, chunks, H)."""
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_t, bos, T = _chunk(cu_seqlens, chunk_indices, i_c)
    b_dw = tl.zeros([BT, BK], dtype=ACC)
    b_dq = tl.zeros([BT, BK], dtype=ACC)
    b_dkh = tl.zeros([BT, BK], dtype=ACC)
    da = tl.zeros([], dtype=ACC)  # this key block's share of da
    dl_m, ddl_m, dom_m = dl, ddl, dom  # level m's [TT, H, V] slabs: advanced by TT H V per level
    for i_m in range(M):
        reader = ((i_t >> i_m) & 1) == 1  # bit m-1 of the chunk, m = i_m + 1
        i_s = (i_m * NCT + i_c) * H + i_h
        for i_v in range(tl.cdiv(V, BV)):
            b_st = _state_t(hs, i_s, i_k, i_v, K, V, BK, BV).to(ACC)  # S^T [BV, BK]
            b_dst = _state_t(dhs, i_s, i_k, i_v, K, V, BK, BV).to(ACC)  # dS_{n+1}^T
            b_dd = tl.load(_rows_block(ddl_m, bos, T, i_t, i_h, i_v, H, V, BT, BV), boundary_check=(0, 1),
                           padding_option="zero").to(ACC)
            b_d = tl.load(_rows_block(dl_m, bos, T, i_t, i_h, i_v, H, V, BT, BV), boundary_check=(0, 1),
                          padding_option="zero").to(ACC)
            b_dw -= tl.dot(b_dd, b_st, input_precision=PRECA)
            b_dkh += tl.dot(b_d, b_dst, input_precision=PRECA)
            da += tl.sum(tl.sum(b_st * b_dst, axis=1), axis=0)
            if reader:
                b_do = tl.load(_rows_block(dom_m, bos, T, i_t, i_h, i_v, H, V, BT, BV), boundary_check=(0, 1),
                               padding_option="zero").to(ACC)
                b_dq += tl.dot(b_do, b_st, input_precision=PRECA)
        dl_m += TT * H * V
        ddl_m += TT * H * V
        dom_m += TT * H * V
    _store_rows(dw, b_dw, bos, T, i_t, i_h, i_k, H, K, BT, BK)
    _store_rows(dqt, b_dq, bos, T, i_t, i_h, i_k, H, K, BT, BK)
    _store_rows(dkhat, b_dkh, bos, T, i_t, i_h, i_k, H, K, BT, BK)
    tl.store(ddecay + (i_k * NCT + i_c) * H + i_h, da)


def _source_mask(cu: Tensor, TT: int, M: int, BT: int) -> Tensor:
    """[M, TT]: 1 where the token's chunk (within its sequence) is a source of level m (bit m-1 clear)."""
    starts = cu[:-1].long()
    seq = torch.searchsorted(cu[1:].long(), torch.arange(TT, device=cu.device), right=True)
    chunk = (torch.arange(TT, device=cu.device) - starts[seq]) // BT
    m = torch.arange(M, device=cu.device)[:, None]
    return ((chunk[None, :] >> m) & 1) == 0


class _DeltaLevelsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, khat, w, u, qt, decay, cu, M, BT):
        _, TT, H, K = w.shape
        V = u.shape[-1]
        offsets, indices, NCT = chunk_layout(cu, BT)
        _, BVs, BK, _ = _blocks(K, V)
        acc, ACC = _acc(w.dtype)
        om = torch.empty(M, TT, H, V, dtype=acc, device=w.device)
        dl = torch.empty_like(om)
        hs = torch.empty(M, NCT, H, K, V, dtype=acc, device=w.device)
        opts = launch_options("log_linear.delta_train_fwd", num_warps=4, num_stages=1, BV=BVs, SPAN=triton_log_linear.WALK_SPAN)
        BVl, segments = opts.pop("BV"), walk_list(cu, M, BT, opts.pop("SPAN"))
        _levels_fwd_kernel[(triton.cdiv(V, BVl), segments.shape[0] * H)](
            khat, w, u, qt, decay, om, dl, hs, cu, offsets, segments, TT, NCT,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BVl, ACC=ACC, PREC=_prec(w.dtype), **opts,
        )
        ctx.save_for_backward(khat, w, qt, decay, dl, hs, cu, offsets, indices)
        ctx.meta = (M, BT, NCT)
        return om

    @staticmethod
    def backward(ctx, dom):
        khat, w, qt, decay, dl, hs, cu, offsets, indices = ctx.saved_tensors
        M, BT, NCT = ctx.meta
        _, TT, H, K = w.shape
        V = dl.shape[-1]
        _, BVs, BK, BV = _blocks(K, V)
        acc, ACC = _acc(w.dtype)
        preca = _preca(w.dtype)
        dom = dom.to(acc).contiguous()
        dhs, ddl = torch.empty_like(hs), torch.empty_like(dl)
        opts = launch_options("log_linear.delta_train_dh", num_warps=4, num_stages=1, BV=BVs, SPAN=triton_log_linear.WALK_SPAN)
        BVl, segments = opts.pop("BV"), walk_list(cu, M, BT, opts.pop("SPAN"))
        _levels_dh_kernel[(triton.cdiv(V, BVl), segments.shape[0] * H)](
            khat, w, qt, decay, dom, ddl, dhs, cu, offsets, segments, TT, NCT,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BVl, ACC=ACC, PRECA=preca, **opts,
        )
        dw, dqt, dkhat = (torch.empty(1, TT, H, K, dtype=acc, device=w.device) for _ in range(3))
        ddecay = torch.empty(triton.cdiv(K, BK), NCT, H, dtype=acc, device=w.device)
        _levels_grads_kernel[(triton.cdiv(K, BK), NCT, H)](
            dl, ddl, dom, hs, dhs, dw, dqt, dkhat, ddecay, cu, indices, TT, NCT, M,
            H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, ACC=ACC, PRECA=preca,
            # 8 warps: three [BT, BK] fp32 accumulators (ptxas at 4 warps: 255 registers, 432 B spilled)
            **launch_options("log_linear.delta_train_grads", num_warps=8, num_stages=1),
        )
        src = _source_mask(cu, TT, M, BT).to(acc)
        du = torch.einsum("mthv,mt->thv", ddl, src).unsqueeze(0)
        return (dkhat.to(khat.dtype), dw.to(w.dtype), du.to(w.dtype), dqt.to(qt.dtype),
                ddecay.sum(0).to(decay.dtype), None, None, None)


def delta_levels(khat: Tensor, w: Tensor, u: Tensor, qt: Tensor, decay: Tensor, cu: Tensor, M: int,
                 BT: int) -> Tensor:
    """The chunk levels 1..M of log-linear (Gated) DeltaNet, unscaled, differentiable in every
    tensor argument (module docstring): o [M, TT, H, V] in the accumulation dtype, o[m-1] = Q̃ S^(m)
    at the readers of level c + m and 0 at its sources. khat, w, qt [1, TT, H, K] and u [1, TT, H, V]
    (one dtype), packed sequences ``cu`` (int32 [N+1]) in chunks of BT, positions from 0 in each;
    decay [chunks, H] = e^{G_last} per chunk of ``chunk_layout(cu, BT)``."""
    if not (khat.dim() == 4 and khat.shape == w.shape == qt.shape and u.dim() == 4 and u.shape[:3] == w.shape[:3]):
        raise ValueError(f"delta_levels: khat, w, qt must share a shape [1, TT, H, K] and u be [1, TT, H, V], got "
                         f"{list(khat.shape)}, {list(w.shape)}, {list(qt.shape)}, {list(u.shape)}")
    if decay.dim() != 2 or decay.shape[1] != w.shape[2]:
        raise ValueError(f"delta_levels: decay must be [chunks, H] with H = {w.shape[2]}, got {list(decay.shape)}")
    return _DeltaLevelsFn.apply(khat.contiguous(), w.contiguous(), u.contiguous(), qt.contiguous(),
                                decay.contiguous(), cu, M, BT)


__all__ = ["delta_levels"]

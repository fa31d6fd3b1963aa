"""Blocked landmark attention: no ``T x T`` matrix, forward or backward.

Seen from a query in block ``c``, an earlier block ``b`` is one "super key": score ``l_b`` (its
landmark) and value ``u_b = softmax_b(s) V_b`` (the block's own softmax). The grouped softmax is
then an ordinary softmax over own-block keys and super keys, so it runs as an online softmax
(running max, sum, output) over key blocks, as in memory-efficient attention. The backward
recomputes each ``[query chunk, key step]`` score block from the saved first-group logsumexp
(FlashAttention-2 style), so only ``q, k, v, k_landmark, o, lse`` are saved. Derivation in
README.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from longctx.ops.common.checks import check_chunk_size, check_positive_int, check_qkv, default_scale
from longctx.ops.common.chunking import gqa_from_rows, gqa_to_rows
from longctx.ops.landmark_attention.state import (
    LandmarkCache,
    cache_length,
    check_landmark_cache,
    check_landmarks,
    join_cache,
    split_cache,
)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate half-precision inputs in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _scores(qb, k, v, kl, pos, b0, b1, bs):
    """Scores of query rows against key blocks ``b0 .. b1-1``.

    qb ``[B, Hk, R, D]`` (scale folded in), k ``[B, Hk, Lp, D]``, v ``[B, Hk, Lp, Dv]``,
    kl ``[B, Hk, Lp/bs, D]``, pos ``[R]`` query positions. Returns the masked token scores
    ``s [B, Hk, R, n, bs]`` (-inf where not attended), ``far [R, n]`` (block b is an earlier
    block for the row: reached through its landmark), landmark scores ``lm [B, Hk, R, n]`` and
    the blocks' ``kb, vb [B, Hk, n, bs, *]``, ``klb [B, Hk, n, D]``.
    """
    n = b1 - b0
    kb = k[:, :, b0 * bs : b1 * bs].unflatten(2, (n, bs))  # [B, Hk, n, bs, D]
    vb = v[:, :, b0 * bs : b1 * bs].unflatten(2, (n, bs))  # [B, Hk, n, bs, Dv]
    klb = kl[:, :, b0:b1]  # [B, Hk, n, D]
    s = torch.einsum("bhrd,bhnjd->bhrnj", qb, kb)  # [B, Hk, R, n, bs]
    lm = torch.einsum("bhrd,bhnd->bhrn", qb, klb)  # [B, Hk, R, n]
    c = pos // bs  # [R] the rows' blocks
    blocks = torch.arange(b0, b1, device=pos.device)
    far = c[:, None] > blocks[None, :]  # [R, n]
    own = c[:, None] == blocks[None, :]  # [R, n]
    key_pos = torch.arange(b0 * bs, b1 * bs, device=pos.device).view(n, bs)
    causal = key_pos[None] <= pos[:, None, None]  # [R, n, bs]
    keep = far[..., None] | (own[..., None] & causal)  # [R, n, bs]
    return s.masked_fill(~keep, float("-inf")), far, lm, kb, vb, klb


def _forward_blocks(q, k, v, kl, group, offset, scale, bs, chunk, step):
    """Online grouped softmax. Layout as in ``_scores``; q ``[B, Hk, T*G, D]`` (row ``t*G + g``),
    query t at position ``offset + t``. Returns o ``[B, Hk, T*G, Dv]`` and the first group's
    logsumexp ``[B, Hk, T*G]`` (accumulation dtype)."""
    B, Hk, R, _ = q.shape
    T, Dv = R // group, v.shape[-1]
    acc = _acc_dtype(q.dtype)
    o = q.new_zeros(B, Hk, R, Dv)
    lse = q.new_zeros(B, Hk, R, dtype=acc)
    k, v, kl = k.to(acc), v.to(acc), kl.to(acc)
    for t0 in range(0, T, chunk):
        t1 = min(t0 + chunk, T)
        r0, r1 = t0 * group, t1 * group
        qb = q[:, :, r0:r1].to(acc) * scale  # [B, Hk, Rb, D]
        pos = (offset + torch.arange(t0, t1, device=q.device)).repeat_interleave(group)
        m = qb.new_full((B, Hk, r1 - r0), float("-inf"))  # running max of the first group
        l = qb.new_zeros(B, Hk, r1 - r0)  # running sum of exp(logit - m)
        ob = qb.new_zeros(B, Hk, r1 - r0, Dv)  # running unnormalised output
        last = (offset + t1 - 1) // bs  # the last row's block: later blocks are never seen
        for b0 in range(0, last + 1, step):
            b1 = min(b0 + step, last + 1)
            s, far, lm, _, vb, _ = _scores(qb, k, v, kl, pos, b0, b1, bs)
            mx = s.amax(dim=-1)  # [B, Hk, Rb, n]; -inf for blocks after the row's own
            p = torch.exp(s - torch.where(torch.isfinite(mx), mx, 0.0)[..., None])
            sm = p.sum(dim=-1)  # >= 1 where anything is attended
            ov = torch.einsum("bhrnj,bhnjd->bhrnd", p, vb)  # [B, Hk, Rb, n, Dv]
            # an earlier block enters as one key: logit lm, weight 1, value u = its softmax mean
            logit = torch.where(far, lm, mx)
            weight = torch.where(far, 1.0, sm)
            value = torch.where(far[..., None], ov / torch.where(sm > 0, sm, 1.0)[..., None], ov)
            m_new = torch.maximum(m, logit.amax(dim=-1))  # finite: block 0 is seen by every row
            alpha = torch.exp(m - m_new)
            beta = torch.exp(logit - m_new[..., None])  # [B, Hk, Rb, n]
            l = alpha * l + (beta * weight).sum(dim=-1)
            ob = alpha[..., None] * ob + torch.einsum("bhrn,bhrnd->bhrd", beta, value)
            m = m_new
        o[:, :, r0:r1] = (ob / l[..., None]).to(o.dtype)
        lse[:, :, r0:r1] = m + torch.log(l)
    return o, lse


class _LandmarkAttention(torch.autograd.Function):
    """Saves q, k, v, k_landmark, o and the first-group logsumexp; recomputes scores backward."""

    @staticmethod
    def forward(ctx, q, k, v, kl, group, offset, scale, bs, chunk, step):
        o, lse = _forward_blocks(q, k, v, kl, group, offset, scale, bs, chunk, step)
        ctx.save_for_backward(q, k, v, kl, o, lse)
        ctx.args = (group, offset, scale, bs, chunk, step)
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q, k, v, kl, o, lse = ctx.saved_tensors
        group, offset, scale, bs, chunk, step = ctx.args
        T = q.shape[2] // group
        acc = _acc_dtype(q.dtype)
        kc, vc, klc = k.to(acc), v.to(acc), kl.to(acc)
        delta = (do.to(acc) * o.to(acc)).sum(dim=-1)  # [B, Hk, R]: dO_i . o_i
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        dkl = torch.zeros(kl.shape, dtype=acc, device=kl.device)
        for t0 in range(0, T, chunk):
            t1 = min(t0 + chunk, T)
            r0, r1 = t0 * group, t1 * group
            qb = q[:, :, r0:r1].to(acc) * scale
            dob = do[:, :, r0:r1].to(acc)  # [B, Hk, Rb, Dv]
            lse_b, delta_b = lse[:, :, r0:r1, None], delta[:, :, r0:r1, None]  # [B, Hk, Rb, 1]
            pos = (offset + torch.arange(t0, t1, device=q.device)).repeat_interleave(group)
            dqb = torch.zeros_like(qb)
            last = (offset + t1 - 1) // bs
            for b0 in range(0, last + 1, step):
                b1 = min(b0 + step, last + 1)
                s, far, lm, kb, vb, klb = _scores(qb, kc, vc, klc, pos, b0, b1, bs)
                # earlier block: A = softmax_b(s), P_b = exp(lm - lse), W = P_b A
                # own block: A = W = exp(s - lse), P_b = 1
                inner = torch.logsumexp(s, dim=-1)  # [B, Hk, Rb, n]; used for earlier blocks
                a = torch.exp(s - torch.where(far, inner, lse_b)[..., None])  # [B, Hk, Rb, n, bs]
                p_b = torch.where(far, torch.exp(lm - lse_b), 1.0)  # [B, Hk, Rb, n]
                w = a * p_b[..., None]  # the final weight of each key
                dp = torch.einsum("bhrd,bhnjd->bhrnj", dob, vb)  # dO . v_j
                c_far = (a * dp).sum(dim=-1)  # dO . u_b
                ds = w * (dp - torch.where(far, c_far, delta_b)[..., None])
                dl = torch.where(far, p_b * (c_far - delta_b), 0.0)  # [B, Hk, Rb, n]
                j0, j1 = b0 * bs, b1 * bs
                dv[:, :, j0:j1] += torch.einsum("bhrnj,bhrd->bhnjd", w, dob).flatten(2, 3)
                dk[:, :, j0:j1] += torch.einsum("bhrnj,bhrd->bhnjd", ds, qb).flatten(2, 3)
                dkl[:, :, b0:b1] += torch.einsum("bhrn,bhrd->bhnd", dl, qb)
                dqb += torch.einsum("bhrnj,bhnjd->bhrd", ds, kb)
                dqb += torch.einsum("bhrn,bhnd->bhrd", dl, klb)
            dq[:, :, r0:r1] = dqb * scale
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dkl.to(kl.dtype),
                None, None, None, None, None, None)


def chunk_landmark_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_landmark: Tensor,
    block_size: int,
    scale: float | None = None,
    initial_state: LandmarkCache | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, LandmarkCache | None]:
    """Landmark attention in query chunks of ``chunk_size`` and key steps of whole blocks.

    Arguments, shapes, state and result as in ``naive_landmark_attention``. A key step covers
    ``max(1, chunk_size // block_size)`` blocks, so ``chunk_size`` need not be a multiple of
    ``block_size``. Memory: O((S + T) (D + Dv)) saved, plus one
    ``[chunk_size, key step]`` score block per (batch, head) at a time; time O(T (S + T) D).
    Gradients flow to q, k, v, k_landmark and the state tensors.
    """
    op = "chunk_landmark_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    bs = check_positive_int("block_size", block_size)
    chunk_size = check_chunk_size(chunk_size)
    scale = default_scale(scale, D)
    cache = check_landmark_cache(op, initial_state, B, bs, Hk, D, Dv, q)
    S = cache_length(cache)
    check_landmarks(op, k_landmark, B, S, T, bs, Hk, D, q)
    k_all, v_all, kl_all = join_cache(cache, k, v, k_landmark)
    L, N = S + T, kl_all.shape[1]
    pad = (-L) % bs  # the open last block is padded with keys no query sees
    n_blk = (L + pad) // bs
    k_pad = F.pad(k_all, (0, 0, 0, 0, 0, pad)).transpose(1, 2)  # [B, Hk, Lp, D]
    v_pad = F.pad(v_all, (0, 0, 0, 0, 0, pad)).transpose(1, 2)  # [B, Hk, Lp, Dv]
    kl_pad = F.pad(kl_all, (0, 0, 0, 0, 0, n_blk - N)).transpose(1, 2)  # [B, Hk, Lp/bs, D]
    group = H // Hk
    o = _LandmarkAttention.apply(
        gqa_to_rows(q, Hk, group), k_pad, v_pad, kl_pad, group, S, scale, bs, chunk_size,
        max(1, chunk_size // bs),
    )
    final = split_cache(k_all, v_all, kl_all, bs) if output_final_state else None
    return gqa_from_rows(o, T, group), final


__all__ = ["chunk_landmark_attention"]

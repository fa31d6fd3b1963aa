"""Memory-efficient softmax attention (Rabe & Staats 2021, "Self-attention does not need
O(n^2) memory"; online softmax and backward as in Dao 2023, FlashAttention-2, Alg. 1 and 2).

Queries and keys are processed in blocks of ``chunk_size``; each query block keeps a running
max ``m``, running sum ``l`` and running output, so no ``T x T`` matrix is ever formed. The
backward recomputes the score blocks from the saved per-row logsumexp. The derivation is in
README.md next to this file. ALiBi (Press et al. 2022) adds ``-m_h * |i - j|`` to each score block
in the forward and in the recomputed backward blocks; ``causal=False`` visits every key block.

``sdpa_softmax_attention`` is the fast path through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from longctx.ops.common.checks import (
    check_bidirectional,
    check_chunk_size,
    check_qkv,
    default_scale,
)
from longctx.ops.common.chunking import gqa_from_rows, gqa_to_rows
from longctx.ops.softmax_attention.bias import alibi_bias, check_alibi_slopes
from longctx.ops.softmax_attention.state import KVCache, check_kv_cache


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate half-precision inputs in float32 (as FlashAttention does)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _future_mask(q_pos: Tensor, j0: int, j1: int) -> Tensor:
    """``[R, j1 - j0]`` bool: True where key position > query position (causal mask)."""
    k_pos = torch.arange(j0, j1, device=q_pos.device)
    return k_pos[None, :] > q_pos[:, None]


def _key_end(causal: bool, offset: int, t1: int, L: int) -> int:
    """Keys a query block ending at ``t1`` may see: causal, up to its last query (later key blocks
    are never visited); bidirectional, all ``L`` keys."""
    return offset + t1 if causal else L


def _block_bias(slopes: Tensor | None, q_pos: Tensor, j0: int, j1: int) -> Tensor | None:
    """ALiBi ``-m * |i - j|`` for one block: slopes ``[Hk, G]``, q_pos ``[Rb]`` (row ``t*G + g``)
    -> ``[Hk, Rb, j1 - j0]`` (broadcast over the batch)."""
    if slopes is None:
        return None
    G = slopes.shape[1]
    m = slopes.repeat(1, q_pos.shape[0] // G)  # [Hk, Rb]: row t*G + g has slope [hk, g]
    dist = (q_pos[:, None] - torch.arange(j0, j1, device=q_pos.device)[None, :]).abs()
    return -m[:, :, None] * dist.to(slopes.dtype)  # Press et al. 2022


def _scores(qb: Tensor, kb: Tensor, q_pos: Tensor, j0: int, j1: int, t0: int, offset: int,
            slopes: Tensor | None, causal: bool) -> Tensor:
    """One block's logits ``[B, Hk, Rb, Jb]``: scaled scores + ALiBi bias, causal-masked."""
    s = qb @ kb.transpose(-1, -2)  # [B, Hk, Rb, Jb], scale already folded into qb
    bias = _block_bias(slopes, q_pos, j0, j1)
    if bias is not None:
        s += bias
    if causal and j1 - 1 > offset + t0:  # block crosses the diagonal
        s.masked_fill_(_future_mask(q_pos, j0, j1), float("-inf"))
    return s


def _forward_blocks(
    q: Tensor, k: Tensor, v: Tensor, group: int, offset: int, scale: float, chunk: int,
    slopes: Tensor | None, causal: bool,
) -> tuple[Tensor, Tensor]:
    """Blocked forward. q ``[B, Hk, T*G, D]`` (row ``t*G + g``), k ``[B, Hk, L, D]``,
    v ``[B, Hk, L, Dv]``; query t sits at position ``offset + t``; slopes ``[Hk, G]`` (in the
    accumulation dtype) or None. Returns o ``[B, Hk, T*G, Dv]`` and the row logsumexp
    ``[B, Hk, T*G]`` (in the accumulation dtype)."""
    B, Hk, R, _ = q.shape
    T, L, Dv = R // group, k.shape[2], v.shape[-1]
    acc = _acc_dtype(q.dtype)
    o = q.new_zeros(B, Hk, R, Dv)
    lse = q.new_zeros(B, Hk, R, dtype=acc)
    for t0 in range(0, T, chunk):
        t1 = min(t0 + chunk, T)
        r0, r1 = t0 * group, t1 * group
        qb = q[:, :, r0:r1].to(acc) * scale  # [B, Hk, Rb, D], scale folded into q
        q_pos = (offset + torch.arange(t0, t1, device=q.device)).repeat_interleave(group)
        m = qb.new_full((B, Hk, r1 - r0), float("-inf"))  # running row max
        l = qb.new_zeros(B, Hk, r1 - r0)  # running row sum of exp(s - m)
        ob = qb.new_zeros(B, Hk, r1 - r0, Dv)  # running unnormalised output
        # key blocks start at 0, so the first one holds key 0, visible to every row: m is finite
        end = _key_end(causal, offset, t1, L)
        for j0 in range(0, end, chunk):
            j1 = min(j0 + chunk, end)
            kb, vb = k[:, :, j0:j1].to(acc), v[:, :, j0:j1].to(acc)
            s = _scores(qb, kb, q_pos, j0, j1, t0, offset, slopes, causal)  # [B, Hk, Rb, Jb]
            m_new = torch.maximum(m, s.amax(dim=-1))
            p = s.sub_(m_new[..., None]).exp_()  # in place: s is not needed again
            alpha = torch.exp(m - m_new)  # rescales what was accumulated under the old max
            l = alpha * l + p.sum(dim=-1)
            ob = ob.mul_(alpha[..., None]).add_(p @ vb)
            m = m_new
        o[:, :, r0:r1] = (ob / l[..., None]).to(o.dtype)
        lse[:, :, r0:r1] = m + torch.log(l)
    return o, lse


class _MemoryEfficientAttention(torch.autograd.Function):
    """Saves only q, k, v, o and the row logsumexp; the backward recomputes score blocks (with the
    same ALiBi bias and mask). The ALiBi slopes are constants: no gradient is returned for them."""

    @staticmethod
    def forward(ctx, q, k, v, group, offset, scale, chunk, slopes, causal):
        o, lse = _forward_blocks(q, k, v, group, offset, scale, chunk, slopes, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.group, ctx.offset, ctx.scale, ctx.chunk = group, offset, scale, chunk
        ctx.slopes, ctx.causal = slopes, causal
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        group, offset, scale, chunk = ctx.group, ctx.offset, ctx.scale, ctx.chunk
        slopes, causal = ctx.slopes, ctx.causal
        R, L = q.shape[2], k.shape[2]
        T = R // group
        acc = _acc_dtype(q.dtype)
        # FlashAttention-2 Alg. 2: D_i = rowsum(dO_i * O_i)
        delta = (do.to(acc) * o.to(acc)).sum(dim=-1)  # [B, Hk, R]
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        for t0 in range(0, T, chunk):
            t1 = min(t0 + chunk, T)
            r0, r1 = t0 * group, t1 * group
            qb = q[:, :, r0:r1].to(acc) * scale  # [B, Hk, Rb, D], scale folded in as forward
            dob = do[:, :, r0:r1].to(acc)  # [B, Hk, Rb, Dv]
            lse_b, delta_b = lse[:, :, r0:r1, None], delta[:, :, r0:r1, None]
            q_pos = (offset + torch.arange(t0, t1, device=q.device)).repeat_interleave(group)
            dqb = torch.zeros_like(qb)
            end = _key_end(causal, offset, t1, L)
            for j0 in range(0, end, chunk):
                j1 = min(j0 + chunk, end)
                kb, vb = k[:, :, j0:j1].to(acc), v[:, :, j0:j1].to(acc)
                s = _scores(qb, kb, q_pos, j0, j1, t0, offset, slopes, causal)  # recomputed
                p = s.sub_(lse_b).exp_()  # P = exp(S - lse): the forward's probabilities
                dv[:, :, j0:j1] += p.transpose(-1, -2) @ dob  # dV = P^T dO (sums the G heads)
                ds = (dob @ vb.transpose(-1, -2)).sub_(delta_b).mul_(p)  # dS = P * (dO V^T - D)
                dqb += ds @ kb  # dQ = scale * dS K   (scale applied below)
                dk[:, :, j0:j1] += ds.transpose(-1, -2) @ qb  # dK = scale * dS^T Q (qb holds it)
            dq[:, :, r0:r1] = dqb * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None


def chunk_softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    initial_state: KVCache | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    alibi_slopes: Tensor | None = None,
    causal: bool = True,
) -> tuple[Tensor, KVCache | None]:
    """Memory-efficient softmax attention: O(T * chunk_size) memory, forward and backward.

    q ``[B, T, H, D]``, k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]``; ``initial_state`` and the
    returned state are KV caches ``(k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv])``, as in
    ``naive_softmax_attention``. Gradients flow to the cache tensors too. Returns
    ``(o [B, T, H, Dv], final_state)``.

    ``alibi_slopes [H]`` and ``causal`` as in ``naive_softmax_attention``. The slopes are
    constants here (ALiBi's are fixed, not learned): the custom backward returns no gradient for
    them, and slopes that require grad are refused (use the naive or sdpa form to learn them).
    ``causal=False`` visits every key block, still in O(T * chunk_size) memory.
    """
    op = "chunk_softmax_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    chunk_size = check_chunk_size(chunk_size)
    check_bidirectional(op, causal, initial_state, output_final_state)
    slopes = check_alibi_slopes(op, alibi_slopes, H, q)
    if slopes is not None and slopes.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{op}: alibi_slopes requires grad, but the chunked form treats the slopes as "
            "constants (no gradient); pass alibi_slopes.detach(), or use naive/sdpa_softmax_attention"
        )
    scale = default_scale(scale, D)
    cache = check_kv_cache(op, initial_state, B, Hk, D, Dv, q)
    if cache is not None:
        k = torch.cat([cache[0], k], dim=1)  # [B, S+T, Hk, D]: cached keys precede the new ones
        v = torch.cat([cache[1], v], dim=1)
    offset = k.shape[1] - T
    group = H // Hk
    if slopes is not None:  # [Hk, G]: query head h = hk * G + g, in the accumulation dtype
        slopes = slopes.detach().to(_acc_dtype(q.dtype)).reshape(Hk, group)
    o = _MemoryEfficientAttention.apply(
        gqa_to_rows(q, Hk, group), k.transpose(1, 2), v.transpose(1, 2), group, offset, scale,
        chunk_size, slopes, causal,
    )
    return gqa_from_rows(o, T, group), ((k, v) if output_final_state else None)


def sdpa_softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    initial_state: KVCache | None = None,
    output_final_state: bool = False,
    alibi_slopes: Tensor | None = None,
    causal: bool = True,
) -> tuple[Tensor, KVCache | None]:
    """Softmax attention through ``torch.nn.functional.scaled_dot_product_attention``.

    Same arguments, state and result as ``naive_softmax_attention``. With a cache of length S
    the causal mask is aligned bottom-right (query t sees keys ``<= S + t``). With
    ``alibi_slopes`` the bias is an explicit float mask ``[H, T, S + T]`` (O(T^2) memory: this is
    the fast path for moderate T; the chunked form has no T x T tensor).
    """
    op = "sdpa_softmax_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    check_bidirectional(op, causal, initial_state, output_final_state)
    slopes = check_alibi_slopes(op, alibi_slopes, H, q)
    scale = default_scale(scale, D)
    cache = check_kv_cache(op, initial_state, B, Hk, D, Dv, q)
    if cache is not None:
        k = torch.cat([cache[0], k], dim=1)
        v = torch.cat([cache[1], v], dim=1)
    S, L = k.shape[1] - T, k.shape[1]
    group = H // Hk
    k_h = k.transpose(1, 2).repeat_interleave(group, dim=1)  # [B, H, L, D]
    v_h = v.transpose(1, 2).repeat_interleave(group, dim=1)  # [B, H, L, Dv]
    q_pos = S + torch.arange(T, device=q.device)
    k_pos = torch.arange(L, device=q.device)
    mask, is_causal = None, False
    if slopes is not None:  # float mask [H, T, L]: ALiBi bias, -inf above the diagonal
        mask = alibi_bias(slopes, q_pos[:, None] - k_pos[None, :], _acc_dtype(q.dtype))
        if causal:
            mask = mask.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
        mask = mask.to(q.dtype)
    elif causal and S == 0:
        is_causal = True
    elif causal:  # is_causal aligns top-left; with a cache the diagonal is offset by S
        mask = k_pos[None, :] <= q_pos[:, None]  # [T, L]: True = keep
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k_h, v_h, attn_mask=mask, is_causal=is_causal, scale=scale
    )  # [B, H, T, Dv]
    return o.transpose(1, 2), ((k, v) if output_final_state else None)


__all__ = ["chunk_softmax_attention", "sdpa_softmax_attention"]

"""Memory-efficient causal softmax attention (Rabe & Staats 2021, "Self-attention does not need
O(n^2) memory"; online softmax and backward as in Dao 2023, FlashAttention-2, Alg. 1 and 2).

Queries and keys are processed in blocks of ``chunk_size``; each query block keeps a running
max ``m``, running sum ``l`` and running output, so no ``T x T`` matrix is ever formed. The
backward recomputes the score blocks from the saved per-row logsumexp. The derivation is in
README.md next to this file.

``sdpa_softmax_attention`` is the fast path through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from longctx.ops.common.checks import check_chunk_size, check_qkv, default_scale
from longctx.ops.softmax_attention.state import KVCache, check_kv_cache


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate half-precision inputs in float32 (as FlashAttention does)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _future_mask(q_pos: Tensor, j0: int, j1: int) -> Tensor:
    """``[R, j1 - j0]`` bool: True where key position > query position (causal mask)."""
    k_pos = torch.arange(j0, j1, device=q_pos.device)
    return k_pos[None, :] > q_pos[:, None]


def _forward_blocks(
    q: Tensor, k: Tensor, v: Tensor, group: int, offset: int, scale: float, chunk: int
) -> tuple[Tensor, Tensor]:
    """Blocked forward. q ``[B, Hk, T*G, D]`` (row ``t*G + g``), k ``[B, Hk, L, D]``,
    v ``[B, Hk, L, Dv]``; query t sits at position ``offset + t``. Returns o ``[B, Hk, T*G, Dv]``
    and the row logsumexp ``[B, Hk, T*G]`` (in the accumulation dtype)."""
    B, Hk, R, _ = q.shape
    T, Dv = R // group, v.shape[-1]
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
        for j0 in range(0, offset + t1, chunk):  # keys past the last query are never visited
            j1 = min(j0 + chunk, offset + t1)
            kb, vb = k[:, :, j0:j1].to(acc), v[:, :, j0:j1].to(acc)
            s = qb @ kb.transpose(-1, -2)  # [B, Hk, Rb, Jb] scores
            if j1 - 1 > offset + t0:  # block crosses the diagonal
                s.masked_fill_(_future_mask(q_pos, j0, j1), float("-inf"))
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
    """Saves only q, k, v, o and the row logsumexp; the backward recomputes score blocks."""

    @staticmethod
    def forward(ctx, q, k, v, group, offset, scale, chunk):
        o, lse = _forward_blocks(q, k, v, group, offset, scale, chunk)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.group, ctx.offset, ctx.scale, ctx.chunk = group, offset, scale, chunk
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        group, offset, scale, chunk = ctx.group, ctx.offset, ctx.scale, ctx.chunk
        R = q.shape[2]
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
            for j0 in range(0, offset + t1, chunk):
                j1 = min(j0 + chunk, offset + t1)
                kb, vb = k[:, :, j0:j1].to(acc), v[:, :, j0:j1].to(acc)
                s = qb @ kb.transpose(-1, -2)  # [B, Hk, Rb, Jb] scores, recomputed
                if j1 - 1 > offset + t0:
                    s.masked_fill_(_future_mask(q_pos, j0, j1), float("-inf"))
                p = s.sub_(lse_b).exp_()  # P = exp(S - lse): the forward's probabilities
                dv[:, :, j0:j1] += p.transpose(-1, -2) @ dob  # dV = P^T dO (sums the G heads)
                ds = (dob @ vb.transpose(-1, -2)).sub_(delta_b).mul_(p)  # dS = P * (dO V^T - D)
                dqb += ds @ kb  # dQ = scale * dS K   (scale applied below)
                dk[:, :, j0:j1] += ds.transpose(-1, -2) @ qb  # dK = scale * dS^T Q (qb holds it)
            dq[:, :, r0:r1] = dqb * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def _to_rows(x: Tensor, Hk: int, group: int) -> Tensor:
    """``[B, T, H, D] -> [B, Hk, T*G, D]``: a group's query heads become extra rows."""
    B, T, _, D = x.shape
    return x.reshape(B, T, Hk, group, D).permute(0, 2, 1, 3, 4).reshape(B, Hk, T * group, D)


def _from_rows(x: Tensor, T: int, group: int) -> Tensor:
    """``[B, Hk, T*G, Dv] -> [B, T, H, Dv]``."""
    B, Hk, _, Dv = x.shape
    return x.reshape(B, Hk, T, group, Dv).permute(0, 2, 1, 3, 4).reshape(B, T, Hk * group, Dv)


def chunk_softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    initial_state: KVCache | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, KVCache | None]:
    """Memory-efficient causal softmax attention: O(T * chunk_size) memory, forward and backward.

    q ``[B, T, H, D]``, k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]``; ``initial_state`` and the
    returned state are KV caches ``(k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv])``, as in
    ``naive_softmax_attention``. Gradients flow to the cache tensors too. Returns
    ``(o [B, T, H, Dv], final_state)``.
    """
    op = "chunk_softmax_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    chunk_size = check_chunk_size(chunk_size)
    scale = default_scale(scale, D)
    cache = check_kv_cache(op, initial_state, B, Hk, D, Dv, q)
    if cache is not None:
        k = torch.cat([cache[0], k], dim=1)  # [B, S+T, Hk, D]: cached keys precede the new ones
        v = torch.cat([cache[1], v], dim=1)
    offset = k.shape[1] - T
    group = H // Hk
    o = _MemoryEfficientAttention.apply(
        _to_rows(q, Hk, group), k.transpose(1, 2), v.transpose(1, 2), group, offset, scale,
        chunk_size,
    )
    return _from_rows(o, T, group), ((k, v) if output_final_state else None)


def sdpa_softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    initial_state: KVCache | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, KVCache | None]:
    """Causal softmax attention through ``torch.nn.functional.scaled_dot_product_attention``.

    Same arguments, state and result as ``naive_softmax_attention``. With a cache of length S
    the causal mask is aligned bottom-right (query t sees keys ``<= S + t``).
    """
    op = "sdpa_softmax_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    scale = default_scale(scale, D)
    cache = check_kv_cache(op, initial_state, B, Hk, D, Dv, q)
    if cache is not None:
        k = torch.cat([cache[0], k], dim=1)
        v = torch.cat([cache[1], v], dim=1)
    S, L = k.shape[1] - T, k.shape[1]
    group = H // Hk
    k_h = k.transpose(1, 2).repeat_interleave(group, dim=1)  # [B, H, L, D]
    v_h = v.transpose(1, 2).repeat_interleave(group, dim=1)  # [B, H, L, Dv]
    if S == 0:
        mask, causal = None, True
    else:  # is_causal aligns top-left; with a cache the diagonal is offset by S
        q_pos = S + torch.arange(T, device=q.device)
        mask = torch.arange(L, device=q.device)[None, :] <= q_pos[:, None]  # [T, L]: True = keep
        causal = False
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k_h, v_h, attn_mask=mask, is_causal=causal, scale=scale
    )  # [B, H, T, Dv]
    return o.transpose(1, 2), ((k, v) if output_final_state else None)


__all__ = ["chunk_softmax_attention", "sdpa_softmax_attention"]

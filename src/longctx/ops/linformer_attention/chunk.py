"""Chunked Linformer attention: ``K' = E K`` and ``V' = F V`` are accumulated over sequence
chunks (``K' = sum_c E[:, c] K[c]``), so no temporary larger than ``[k, chunk]`` of ``E`` times a
chunk of keys is formed, and the output is computed over query chunks (scores ``[chunk, k]``).
Memory is O(T * k) for autograd plus O(k * D) for the projections; time O(T * k * D).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_chunk_size, check_qkv, default_scale
from longctx.ops.linformer_attention.checks import check_projections


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate half-precision inputs in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _project_chunked(P: Tensor, x: Tensor, chunk: int, acc: torch.dtype) -> Tensor:
    """``P [(Hk,) k, T]`` times ``x [B, T, Hk, D]`` along T, summed chunk by chunk
    -> ``[B, k, Hk, D]``."""
    B, T, Hk, D = x.shape
    out = x.new_zeros(B, P.shape[-2], Hk, D, dtype=acc)
    eq = "ct,bthd->bchd" if P.dim() == 2 else "hct,bthd->bchd"
    for t0 in range(0, T, chunk):
        t1 = min(t0 + chunk, T)
        out = out + torch.einsum(eq, P[..., t0:t1].to(acc), x[:, t0:t1].to(acc))
    return out


def chunk_linformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    E: Tensor,
    F: Tensor,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, None]:
    """Linformer attention in sequence chunks of ``chunk_size``.

    Arguments and result as in ``naive_linformer_attention``: q ``[B, T, H, D]``, k ``[B, T, Hk,
    D]``, v ``[B, T, Hk, Dv]``, ``E``, ``F`` ``[k, max_len]`` or ``[Hk, k, max_len]`` with
    ``max_len >= T``. Returns ``(o [B, T, H, Dv], None)``. Half-precision inputs are accumulated
    in float32.
    """
    op = "chunk_linformer_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    chunk_size = check_chunk_size(chunk_size)
    scale = default_scale(scale, D)
    E_T, F_T = check_projections(op, E, F, T, Hk, q)  # [(Hk,) k, T]
    acc = _acc_dtype(q.dtype)

    k_proj = _project_chunked(E_T, k, chunk_size, acc)  # [B, k, Hk, D]   K' = E K
    v_proj = _project_chunked(F_T, v, chunk_size, acc)  # [B, k, Hk, Dv]  V' = F V
    group = H // Hk
    q_g = q.reshape(B, T, Hk, group, D)  # query head h = (kv head h // G, h % G)
    outs = []
    for i0 in range(0, T, chunk_size):
        i1 = min(i0 + chunk_size, T)
        qb = q_g[:, i0:i1].to(acc)  # [B, Ib, Hk, G, D]
        s = scale * torch.einsum("bihgd,bchd->bhgic", qb, k_proj)  # [B, Hk, G, Ib, k]
        p = torch.softmax(s, dim=-1)
        outs.append(torch.einsum("bhgic,bchd->bihgd", p, v_proj))  # [B, Ib, Hk, G, Dv]
    if not outs:
        return q.new_zeros(B, 0, H, Dv), None
    o = torch.cat(outs, dim=1).reshape(B, T, H, Dv)
    return o.to(q.dtype), None


__all__ = ["chunk_linformer_attention"]

"""Chunked Nystromformer attention: the same approximation as ``naive.py`` without ever forming a
``T x T`` matrix, by associating the products right to left:

    W = pinv(softmax(Q~ K~^T)) (softmax(Q~ K^T) V)         [m, Dv]
    o = softmax(Q K~^T) W                                   per query chunk

Memory is O(T * m) (the ``[m, T]`` and ``[T, m]`` kernels autograd keeps) and time
O(T * m * D + m^3); the pseudo-inverse is the paper's iteration by default (6 iterations).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_chunk_size, check_positive_int, check_qkv, default_scale
from longctx.ops.nystromformer.landmarks import segment_means
from longctx.ops.nystromformer.pinv import check_pinv_iterations, nystrom_pinv


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def chunk_nystrom_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    num_landmarks: int,
    scale: float | None = None,
    pinv_iterations: int | None = 6,
    chunk_size: int = 64,
) -> tuple[Tensor, None]:
    """Nystrom attention in O(T * m) memory; queries in chunks of ``chunk_size``.

    Arguments and result as in ``naive_nystrom_attention`` (q ``[B, T, H, D]``, k ``[B, T, Hk,
    D]``, v ``[B, T, Hk, Dv]`` -> ``(o [B, T, H, Dv], None)``), except that ``pinv_iterations``
    defaults to the paper's 6 iterations (None: exact ``torch.linalg.pinv``). Half-precision
    inputs are computed in float32.
    """
    op = "chunk_nystrom_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    m = check_positive_int("num_landmarks", num_landmarks)
    pinv_iterations = check_pinv_iterations(pinv_iterations)
    chunk_size = check_chunk_size(chunk_size)
    scale = default_scale(scale, D)
    if T == 0:
        return q.new_zeros(B, 0, H, Dv), None
    dtype, acc = q.dtype, _acc_dtype(q.dtype)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)

    group = H // Hk
    q_l = segment_means(q, m)  # [B, m_eff, H, D]  Q~
    k_l = segment_means(k, m)  # [B, m_eff, Hk, D]  K~ (the mean commutes with the GQA repeat)
    m_eff = q_l.shape[1]
    q_lg = q_l.reshape(B, m_eff, Hk, group, D)  # query head h = (kv head h // G, h % G)

    kernel_a = torch.softmax(scale * torch.einsum("bihgd,bjhd->bhgij", q_lg, k_l), dim=-1)
    kernel_b = torch.softmax(scale * torch.einsum("bihgd,bshd->bhgis", q_lg, k), dim=-1)
    bv = torch.einsum("bhgis,bshd->bhgid", kernel_b, v)  # [B, Hk, G, m, Dv]  softmax(Q~ K^T) V
    w = nystrom_pinv(kernel_a, pinv_iterations) @ bv  # [B, Hk, G, m, Dv]

    q_g = q.reshape(B, T, Hk, group, D)
    outs = []
    for i0 in range(0, T, chunk_size):
        i1 = min(i0 + chunk_size, T)
        s = scale * torch.einsum("bthgd,bjhd->bhgtj", q_g[:, i0:i1], k_l)  # [B, Hk, G, Ib, m]
        outs.append(torch.einsum("bhgtj,bhgjd->bthgd", torch.softmax(s, dim=-1), w))
    o = torch.cat(outs, dim=1).reshape(B, T, H, Dv)  # [B, T, H, Dv]
    return o.to(dtype), None


__all__ = ["chunk_nystrom_attention"]

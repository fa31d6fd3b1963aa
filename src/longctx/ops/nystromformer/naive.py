"""Nystromformer attention, the definition (Xiong et al. 2021, "Nystromformer: A Nystrom-Based
Algorithm for Approximating Self-Attention", §3), written plainly with the exact pseudo-inverse:

    S_hat = softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T)        (scores scaled)
    o     = S_hat V

with landmarks ``Q~``, ``K~`` the segment means of ``Q``, ``K``. The ``[T, T]`` matrix ``S_hat``
(the approximation of ``softmax(Q K^T)``) is formed explicitly. Bidirectional only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_positive_int, check_qkv, default_scale
from longctx.ops.nystromformer.landmarks import segment_means
from longctx.ops.nystromformer.pinv import check_pinv_iterations, nystrom_pinv


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def naive_nystrom_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    num_landmarks: int,
    scale: float | None = None,
    pinv_iterations: int | None = None,
) -> tuple[Tensor, None]:
    """Nystrom approximation of bidirectional softmax attention with ``num_landmarks`` landmarks.

    q ``[B, T, H, D]``, k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]`` (GQA: query head h reads kv
    head ``h // (H // Hk)``). Landmarks: segment means of ``l = ceil(T / m)`` tokens
    (``landmarks.segment_means``; ``m_eff = ceil(T / l)`` of them). ``pinv_iterations``: None for
    the exact ``torch.linalg.pinv`` (the default here), or the number of iterations of the
    paper's iterative pseudo-inverse (``pinv.iterative_pinv``). Returns ``(o [B, T, H, Dv],
    None)``: there is no state.
    """
    op = "naive_nystrom_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    m = check_positive_int("num_landmarks", num_landmarks)
    pinv_iterations = check_pinv_iterations(pinv_iterations)
    scale = default_scale(scale, D)
    if T == 0:
        return q.new_zeros(B, 0, H, Dv), None
    dtype, acc = q.dtype, _acc_dtype(q.dtype)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)  # half precision: computed in float32

    group = H // Hk
    k_h = k.repeat_interleave(group, dim=2)  # [B, T, H, D]
    v_h = v.repeat_interleave(group, dim=2)  # [B, T, H, Dv]
    q_l = segment_means(q, m)  # [B, m_eff, H, D]  Q~
    k_l = segment_means(k_h, m)  # [B, m_eff, H, D]  K~

    # the three kernels: softmax(Q K~^T) [B, H, T, m], softmax(Q~ K~^T) [B, H, m, m],
    # softmax(Q~ K^T) [B, H, m, T]
    kernel_f = torch.softmax(scale * torch.einsum("bthd,bjhd->bhtj", q, k_l), dim=-1)
    kernel_a = torch.softmax(scale * torch.einsum("bihd,bjhd->bhij", q_l, k_l), dim=-1)
    kernel_b = torch.softmax(scale * torch.einsum("bihd,bshd->bhis", q_l, k_h), dim=-1)
    s_hat = kernel_f @ nystrom_pinv(kernel_a, pinv_iterations) @ kernel_b  # [B, H, T, T]
    o = torch.einsum("bhts,bshd->bthd", s_hat, v_h)  # [B, T, H, Dv]
    return o.to(dtype), None


__all__ = ["naive_nystrom_attention"]

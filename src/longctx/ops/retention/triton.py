"""Retention and simple GLA (a scalar decay per token and head) through the Triton kernels of
``longctx.ops.common.triton_scalar_decay`` (import needs Triton)."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.triton_scalar_decay import scalar_decay_chunk


def triton_simple_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = scale q_t^T S_t (GLA with a scalar gate).

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] (<= 0); initial_state: [N, H, K, V];
    cu_seqlens: [N+1] for packed sequences (B = 1). Returns o and the final state (or None).
    """
    return scalar_decay_chunk(q, k, v, g, scale=scale, initial_state=initial_state,
                              output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def triton_retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Retention (RetNet eq. 7) with ``log_decay [H]``: simple GLA with g_t = log gamma_h."""
    B, T, H, _ = q.shape
    g = log_decay.to(torch.promote_types(q.dtype, torch.float32)).view(1, 1, H).expand(B, T, H)
    return triton_simple_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                             output_final_state=output_final_state, cu_seqlens=cu_seqlens)

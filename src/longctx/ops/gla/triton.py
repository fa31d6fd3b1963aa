"""GLA through the Triton kernels of ``longctx.ops.common.triton_gla`` (import needs Triton)."""

from __future__ import annotations

from torch import Tensor

from longctx.ops.common.triton_gla import KERNEL_CHUNK, SUB_CHUNK, gla_chunk


def triton_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = KERNEL_CHUNK,
    sub_chunk: int = SUB_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale q_t^T S_t (Yang et al. 2024, §4.1).

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H, K] log forget gate (<= 0); initial_state:
    [N, H, K, V] (N = B, or the number of packed sequences); cu_seqlens: [N+1] for packed
    sequences (B = 1); chunk_size, sub_chunk: the kernels' tiles (powers of two, not a semantic
    choice; on a GPU chunk_size >= 32 and sub_chunk >= 16, smaller ones only for the CPU
    interpreter's tests).
    Returns o [B, T, H, V] and the final state [N, H, K, V] (float32 for half inputs) or None.
    """
    return gla_chunk(q, k, v, g, scale=scale, initial_state=initial_state,
                     output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size,
                     sub_chunk=sub_chunk)

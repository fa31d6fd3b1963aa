"""DeltaNet through the Triton kernels of ``longctx.ops.common.triton_delta`` (import needs Triton).

Forward and backward both run in Triton (the UT transform with its in-kernel triangular inverse,
the sequential state and reverse state-gradient passes, the chunk outputs and every gradient);
the host only allocates and launches. See the kernel module's header for the design.
"""

from __future__ import annotations

from torch import Tensor

from longctx.ops.common.triton_delta import KERNEL_CHUNK, delta_rule_chunk


def triton_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = KERNEL_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = scale q_t^T S_t.

    q, k: [B, T, H, K] (k unit-norm, K <= 256); v: [B, T, H, V]; beta: [B, T, H] in [0, 2];
    initial_state: [N, H, K, V] (N = B, or the number of packed sequences); cu_seqlens: [N+1] for
    packed sequences (B = 1); chunk_size: 16, 32 or 64. Returns o [B, T, H, V] (q's dtype) and the
    final state [N, H, K, V] (float32; float64 for float64 inputs) or None. Inputs are not checked.
    """
    return delta_rule_chunk(q, k, v, beta, None, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                            chunk_size=chunk_size)

"""Log-linear Mamba-2 through the Triton kernels of ``ops/common/triton_log_linear.py`` (import
needs Triton).

SSD maps onto the scalar-decay base (Dao & Gu 2024, §5): q = C, k = B, v = dt x, g = dt A, scale 1
(``inputs.prepare_mamba2``, groups expanded to heads); the kernels run the chunked log-linear form
(Guo et al. 2025, §3.3 / §4.1) forward and backward; the map onto (q, k, v, g) and the skip
connection ``D x`` stay in PyTorch, so autograd carries the gradients to x, dt, A, B, C and D.

First version: positions start at 0 (no ``initial_state``), no final state, no packed variable
lengths (``cu_seqlens``); ``chunk_log_linear_mamba2`` falls back to PyTorch for those calls.
"""

from __future__ import annotations

from torch import Tensor

from longctx.ops.common.triton_log_linear import log_linear_scalar_decay_chunk
from longctx.ops.log_linear.inputs import Prepared, mamba2_output, prepare_mamba2

MIN_KERNEL_CHUNK, MAX_KERNEL_CHUNK = 16, 64  # tl.dot needs tiles >= 16; [C, C] tiles stay small


def kernel_chunk(chunk_size: int) -> int:
    """The kernels' chunk (a power of two in [16, 64]) for a requested ``chunk_size`` (a power of
    two): the result does not depend on it, only speed and register use do."""
    return min(max(chunk_size, MIN_KERNEL_CHUNK), MAX_KERNEL_CHUNK)


def triton_log_linear_prepared(p: Prepared, chunk_size: int = 64) -> Tensor:
    """o [B, T, H, Dv] of a prepared scalar-gate base (``p.g [B, T, H]``, ``p.t0 == 0``)."""
    if p.g is None or p.g.dim() != 3 or p.beta is not None or p.t0 != 0:
        raise ValueError("triton_log_linear_prepared: needs a scalar gate [B, T, H], no delta "
                         "rule and positions starting at 0")
    return log_linear_scalar_decay_chunk(p.q, p.k, p.v, p.g, p.lam, chunk_size=kernel_chunk(chunk_size))


def triton_log_linear_mamba2(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    lambda_levels: Tensor,
    *,
    D: Tensor | None = None,
    chunk_size: int = 64,
) -> Tensor:
    """Log-linear Mamba-2 on the GPU, positions from 0, no state in or out.

    x: [B, T, H, P]; dt: [B, T, H] (>= 0); A: [H] (<= 0); B, C: [B, T, G, N], G | H; D: [H] or
    None; lambda_levels: [B, T, H, L], L >= bit_length(T - 1) + 1. Returns y [B, T, H, P].
    """
    p = prepare_mamba2("triton_log_linear_mamba2", x, dt, A, B, C, D, lambda_levels, None)
    return mamba2_output(triton_log_linear_prepared(p, chunk_size), x, D).to(x.dtype)


__all__ = ["kernel_chunk", "triton_log_linear_mamba2", "triton_log_linear_prepared"]

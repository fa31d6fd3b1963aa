"""Log-linear attention on the GPU (import needs Triton), two ways:

* a scalar decay or none (Mamba-2, retention, linear attention): the fused kernels of
  ``ops/common/triton_log_linear.py``. SSD maps onto this base (Dao & Gu 2024, §5): q = C, k = B,
  v = dt x, g = dt A, scale 1 (``inputs.prepare_mamba2``, groups expanded to heads); the map and the
  skip connection ``D x`` stay in PyTorch, so autograd carries the gradients to x, dt, A, B, C, D.
* any other base with a chunked kernel that takes ``cu_seqlens`` (Gated DeltaNet, GLA): one call
  of the base's own kernel per chunk level (``log_linear_by_levels``). The sources of a query t at
  Fenwick level l are the tokens of t's 2^l-aligned block whose bit l-1 is 0, while t's bit l-1 is
  1 (Guo et al. 2025, §3.1), so the level-l outputs are the base's recurrence run with writes from
  those tokens only, restarted at every block:
      o^(l)_t = [bit l-1 of t = 1] q_t^T S^(l)_t,
      S^(l)   = the base over v ⊙ [bit l-1 of s = 0], reset every 2^l tokens
  (a masked token still applies its transition, e.g. the delta rule's erase, and writes nothing).
  For the chunk levels l = c + m (C = 2^c, m = 1..M) the blocks are whole chunks: one kernel call
  with ``cu_seqlens`` = the blocks, forward and backward in Triton. The levels 0..c inside a chunk
  stay in PyTorch: O = (W ⊙ Λ) V with the base's intra-chunk matrix W (``chunk.intra_output``).
  Work: the base's chunked pass M = bit_length(N - 1) times for N chunks (O(T log T)).

Both: positions start at 0 (no ``initial_state``), no final state, no packed variable lengths;
the chunk ops fall back to PyTorch for those calls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.triton_delta import delta_rule_chunk
from longctx.ops.common.triton_gla import gla_chunk
from longctx.ops.common.triton_log_linear import log_linear_scalar_decay_chunk
from longctx.ops.log_linear.chunk import _chunked, _gated_pieces, delta_intra_scores, intra_output
from longctx.ops.log_linear.inputs import Prepared, mamba2_output, prepare_mamba2

MIN_KERNEL_CHUNK, MAX_KERNEL_CHUNK = 16, 64  # tl.dot needs tiles >= 16; [C, C] tiles stay small


def kernel_chunk(chunk_size: int) -> int:
    """The kernels' chunk (a power of two in [16, 64]) for a requested ``chunk_size`` (a power of
    two): the result does not depend on it, only speed and register use do."""
    return min(max(chunk_size, MIN_KERNEL_CHUNK), MAX_KERNEL_CHUNK)


def triton_log_linear_prepared(p: Prepared, chunk_size: int = 64, io_dtype: torch.dtype | None = None) -> Tensor:
    """o [B, T, H, Dv] (the compute dtype) of a prepared base whose positions start at 0: the fused
    kernels for a scalar gate or none, else ``log_linear_by_levels``. ``io_dtype``: the dtype the
    base kernels read q / k / v in (the caller's, e.g. bf16; default the compute dtype)."""
    if p.t0 != 0:
        raise ValueError("triton_log_linear_prepared: positions must start at 0 (no initial state)")
    C = kernel_chunk(chunk_size)
    if p.beta is None and (p.g is None or p.g.dim() == 3):
        g = p.g if p.g is not None else torch.zeros_like(p.q[..., 0])  # linear attention: no decay
        return log_linear_scalar_decay_chunk(p.q, p.k, p.v, g, p.lam, chunk_size=C)
    return log_linear_by_levels(p, C, io_dtype or p.q.dtype)


def _level_masks(T: int, level: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(writes, reads) [T, 1, 1] of Fenwick level ``level`` >= 1: bit level-1 of t is 0 / 1."""
    bit = (torch.arange(T, device=device) >> (level - 1)) & 1
    return (bit == 0).view(T, 1, 1), (bit == 1).view(T, 1, 1)


def _blocks(B: int, T: int, block: int, device: torch.device) -> Tensor:
    """cu_seqlens [n + 1] (int32) of B sequences of T tokens packed end to end, each cut into
    blocks of ``block`` tokens (the last one shorter)."""
    starts = torch.arange(B, device=device)[:, None] * T + torch.arange(0, T, block, device=device)
    end = torch.tensor([B * T], device=device)
    return torch.cat([starts.flatten(), end]).to(torch.int32)


def log_linear_by_levels(p: Prepared, C: int, io_dtype: torch.dtype) -> Tensor:
    """Log-linear attention over a delta-rule or per-dim-gate (GLA) base, positions from 0: the
    levels inside chunks of C tokens in PyTorch, each chunk level by one call of the base's chunked
    kernel (module header). p: prepared (q scaled; beta set for the gated delta rule, else g
    [B, T, H, Dk]); C: a power of two in [16, 64]. Returns o [B, T, H, Dv] in the compute dtype."""
    B, T, H, _ = p.q.shape
    N, c = -(-T // C), C.bit_length() - 1

    def chunked(x: Tensor) -> Tensor:
        return _chunked(x, C, 0, N)

    q, k, v = chunked(p.q), chunked(p.k), chunked(p.v)
    if p.beta is not None:
        W = delta_intra_scores(q, k, chunked(p.g), chunked(p.beta))
    else:
        W = _gated_pieces(q, k, chunked(p.g))[0]
    o = intra_output(W, chunked(p.lam), v)  # [B, H, N, C, Dv]
    o = o.reshape(B, H, N * C, -1)[:, :, :T].transpose(1, 2)

    packed = lambda x: x.reshape(1, B * T, *x.shape[2:])
    qk = [packed(x.to(io_dtype)) for x in (p.q, p.k)]
    v_io = p.v.to(io_dtype)
    for m in range(1, (N - 1).bit_length() + 1):
        writes, reads = _level_masks(T, c + m, p.q.device)
        cu = _blocks(B, T, C << m, p.q.device)
        v_m = packed(v_io * writes.to(io_dtype))
        if p.beta is not None:
            o_m = delta_rule_chunk(*qk, v_m, packed(p.beta), packed(p.g), cu_seqlens=cu, chunk_size=C)[0]
        else:
            o_m = gla_chunk(*qk, v_m, packed(p.g), cu_seqlens=cu, chunk_size=C)[0]
        o = o + (p.lam[..., c + m, None] * reads) * o_m.view(B, T, H, -1).to(o.dtype)
    return o


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


__all__ = ["kernel_chunk", "log_linear_by_levels", "triton_log_linear_mamba2", "triton_log_linear_prepared"]

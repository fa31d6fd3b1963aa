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

The final state (``output_final_state``) comes from the level path for every base: level c + m
of position T is the final state of the last block of the level-m call (when bit c+m-1 of T is
set, else empty), the levels 1..c from the last partial chunk in PyTorch. Positions start at 0
(no ``initial_state``) and there are no packed variable lengths: the chunk ops fall back to
PyTorch for those calls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.triton_delta import delta_rule_chunk
from longctx.ops.common.triton_gla import gla_chunk
from longctx.ops.common.triton_log_linear import log_linear_scalar_decay_chunk
from longctx.ops.common.triton_scalar_decay import scalar_decay_chunk
from longctx.ops.log_linear.chunk import (
    _chunk,
    _chunked,
    _gated_pieces,
    delta_intra_scores,
    intra_output,
)
from longctx.ops.log_linear.inputs import Prepared, mamba2_output, prepare_mamba2

MIN_KERNEL_CHUNK, MAX_KERNEL_CHUNK = 16, 64  # tl.dot needs tiles >= 16; [C, C] tiles stay small


def kernel_chunk(chunk_size: int) -> int:
    """The kernels' chunk (a power of two in [16, 64]) for a requested ``chunk_size`` (a power of
    two): the result does not depend on it, only speed and register use do."""
    return min(max(chunk_size, MIN_KERNEL_CHUNK), MAX_KERNEL_CHUNK)


def triton_log_linear_prepared(
    p: Prepared, chunk_size: int = 64, io_dtype: torch.dtype | None = None, output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """o [B, T, H, Dv] (the compute dtype) and the final level states [B, bit_length(T), H, Dk, Dv]
    or None, of a prepared base whose positions start at 0: the fused kernels for a scalar gate or
    none without a final state, else ``log_linear_by_levels``. ``io_dtype``: the dtype the base
    kernels read q / k / v in (the caller's, e.g. bf16; default the compute dtype)."""
    if p.t0 != 0:
        raise ValueError("triton_log_linear_prepared: positions must start at 0 (no initial state)")
    C = kernel_chunk(chunk_size)
    if p.beta is None and (p.g is None or p.g.dim() == 3) and not output_final_state:
        g = p.g if p.g is not None else torch.zeros_like(p.q[..., 0])  # linear attention: no decay
        return log_linear_scalar_decay_chunk(p.q, p.k, p.v, g, p.lam, chunk_size=C), None
    return log_linear_by_levels(p, C, io_dtype or p.q.dtype, output_final_state)


def _bit(T: int, level: int, device: torch.device) -> Tensor:
    """[T, 1, 1]: bit level-1 of each position t (1: t reads Fenwick level ``level`` >= 1; 0: t
    is one of the level's sources)."""
    return ((torch.arange(T, device=device) >> (level - 1)) & 1).view(T, 1, 1)


def _blocks(B: int, T: int, block: int, device: torch.device) -> Tensor:
    """cu_seqlens [n + 1] (int32) of B sequences of T tokens packed end to end, each cut into
    blocks of ``block`` tokens (the last one shorter)."""
    starts = torch.arange(B, device=device)[:, None] * T + torch.arange(0, T, block, device=device)
    end = torch.tensor([B * T], device=device)
    return torch.cat([starts.flatten(), end]).to(torch.int32)


def _base_kernel(p: Prepared, qk: list[Tensor], v: Tensor, cu: Tensor, C: int, final: bool):
    """The base's chunked kernel on packed [1, B*T, ...] inputs and blocks ``cu``: (o, ht | None)."""
    packed = lambda x: x.reshape(1, -1, *x.shape[2:])
    if p.beta is not None:  # (gated) delta rule
        g = None if p.g is None else packed(p.g)
        return delta_rule_chunk(*qk, v, packed(p.beta), g, cu_seqlens=cu, chunk_size=C, output_final_state=final)
    if p.g is not None and p.g.dim() == 4:  # GLA's per-key gate
        return gla_chunk(*qk, v, packed(p.g), cu_seqlens=cu, chunk_size=C, output_final_state=final)
    g = None if p.g is None else packed(p.g)  # scalar decay or none
    return scalar_decay_chunk(*qk, v, g, cu_seqlens=cu, chunk_size=C, output_final_state=final)


def _intra(p: Prepared, C: int, output_final_state: bool = False):
    """The levels inside chunks of C tokens (PyTorch): o [B, T, H, Dv] and, for the final state,
    the levels 1..c of position T from the last chunk's tokens ([B, bit_length(T), H, Dk, Dv],
    chunk levels zero) or None."""
    B, T, H, _ = p.q.shape
    N = -(-T // C)
    q, k, v, g = (None if x is None else _chunked(x, C, 0, N) for x in (p.q, p.k, p.v, p.g))
    if p.beta is not None:
        W = delta_intra_scores(q, k, g, _chunked(p.beta, C, 0, N))
    else:
        W = _gated_pieces(q, k, g)[0]
    o = intra_output(W, _chunked(p.lam, C, 0, N), v)  # [B, H, N, C, Dv]
    o = o.reshape(B, H, N * C, -1)[:, :, :T].transpose(1, 2)
    r1 = T % C
    if not output_final_state or r1 == 0:  # a chunk boundary: the levels 1..c are empty
        return o, None
    last = lambda x: None if x is None else x[:, T - r1 :]
    tail = Prepared(last(p.q), last(p.k), last(p.v), last(p.g), last(p.beta), last(p.lam), None, T - r1)
    return o, _chunk(tail, C, True)[1]


def log_linear_by_levels(p: Prepared, C: int, io_dtype: torch.dtype, output_final_state: bool = False):
    """Log-linear attention over any base with a chunked kernel, positions from 0: the levels
    inside chunks of C tokens in PyTorch, each chunk level by one call of the base's kernel with
    the level's blocks as ``cu_seqlens`` (module header). p: prepared (q scaled); C: a power of two
    in [16, 64]. Returns o [B, T, H, Dv] in the compute dtype and the final level states
    [B, bit_length(T), H, Dk, Dv] (the FenwickState's S) or None."""
    B, T, H, Dk = p.q.shape
    N, c = -(-T // C), C.bit_length() - 1
    o, S = _intra(p, C, output_final_state)
    if output_final_state and S is None:
        S = p.q.new_zeros(B, T.bit_length(), H, Dk, p.v.shape[-1])
    S_levels = None if S is None else list(S.unbind(1))
    qk = [x.to(io_dtype).reshape(1, B * T, H, -1) for x in (p.q, p.k)]
    v_io = p.v.to(io_dtype)
    out_levels = (N - 1).bit_length()  # chunk levels some query reads
    state_levels = max(T.bit_length() - c, 0) if output_final_state else 0
    for m in range(1, max(out_levels, state_levels) + 1):
        bit = _bit(T, c + m, p.q.device)
        final = m <= state_levels and bool((T >> (c + m - 1)) & 1)  # position T reads level c + m
        if m > out_levels and not final:
            continue
        v_m = (v_io * (1 - bit).to(io_dtype)).reshape(1, B * T, H, -1)  # writes: bit c+m-1 is 0
        o_m, ht = _base_kernel(p, qk, v_m, _blocks(B, T, C << m, p.q.device), C, final)
        if m <= out_levels:
            o = o + (p.lam[..., c + m, None] * bit) * o_m.view(B, T, H, -1).to(o.dtype)
        if final:  # the last block of each sequence holds level c + m of position T
            S_levels[c + m - 1] = S_levels[c + m - 1] + ht.view(B, -1, H, Dk, ht.shape[-1])[:, -1].to(S.dtype)
    return o, (None if S is None else torch.stack(S_levels, dim=1))


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
    return mamba2_output(triton_log_linear_prepared(p, chunk_size)[0], x, D).to(x.dtype)


__all__ = ["kernel_chunk", "log_linear_by_levels", "triton_log_linear_mamba2", "triton_log_linear_prepared"]

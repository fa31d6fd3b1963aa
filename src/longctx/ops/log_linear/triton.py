"""Log-linear attention on the GPU (import needs Triton), two ways:

* a scalar decay or none (Mamba-2, retention, linear attention), no state in or out: the fused kernels of
  ``ops/common/triton_log_linear.py``. SSD maps onto this base (Dao & Gu 2024, §5): q = C, k = B,
  v = dt x, g = dt A, scale 1 (``inputs.prepare_mamba2``, groups expanded to heads); the map and the
  skip connection ``D x`` stay in PyTorch, so autograd carries the gradients to x, dt, A, B, C, D.
* every other call (Gated DeltaNet, GLA; any base with a state in or out): the base's own
  chunked kernel (it takes ``cu_seqlens``) per chunk level (``log_linear_by_levels``). The sources of a query t at
  Fenwick level l are the tokens of t's 2^l-aligned block whose bit l-1 is 0, while t's bit l-1 is
  1 (Guo et al. 2025, §3.1), so the level-l outputs are the base's recurrence run with writes from
  those tokens only, restarted at every block:
      o^(l)_t = [bit l-1 of t = 1] q_t^T S^(l)_t,
      S^(l)   = the base over v ⊙ [bit l-1 of s = 0], reset every 2^l tokens
  (a masked token still applies its transition, e.g. the delta rule's erase, and writes nothing).
  For the chunk levels l = c + m (C = 2^c, m = 1..M) the blocks are whole chunks: one kernel call
  with ``cu_seqlens`` = the blocks, forward and backward in Triton. The levels 0..c inside a chunk
  stay in PyTorch: O = (W ⊙ Λ) V with the base's intra-chunk matrix W (``chunk.intra_output``).
  Work: the base's chunked pass M = bit_length(N - 1) times for N chunks (O(T log T)), all M
  levels in one launch (M copies of the sequences packed end to end) so they run in parallel.

States, for every base through the level path: an initial FenwickState at position t0 aligns the
chunks and blocks to absolute positions (the first ones shorter); its level l is read by the query
at t at level max(l, bit_length(t XOR t0)) (``fenwick.init_levels``), carried by one more call of
the base's kernel from that initial state with no writes. The final state: level c + m of t1 is
the final state of the last block of the level-m call (when bit c+m-1 of t1 is set, else empty)
plus the initial levels that land there, the levels 1..c come from the last chunk in PyTorch.
Packed variable lengths (``cu_seqlens``, no states): ``triton_log_linear_attention`` /
``triton_log_linear_gated_deltanet`` / ``triton_log_linear_mamba2``.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from longctx.ops.common.checks import check_cu_seqlens
from longctx.ops.common.triton_delta import delta_rule_chunk
from longctx.ops.common.triton_gla import gla_chunk
from longctx.ops.common.triton_log_linear import log_linear_scalar_decay_chunk
from longctx.ops.common.triton_log_linear_delta import delta_log_linear_forward
from longctx.ops.common.triton_log_linear_delta_train import delta_levels
from longctx.ops.common.triton_scalar_decay import grad_wanted, packed_sequences, scalar_decay_chunk
from longctx.ops.deltanet.chunk import ut_solve
from longctx.ops.log_linear.chunk import (
    _chunk,
    _chunked,
    _decay_matrix,
    _gated_pieces,
    delta_intra_scores,
    gla_base_unsupported,
    intra_output,
)
from longctx.ops.log_linear.fenwick import init_levels
from longctx.ops.log_linear.inputs import (
    Prepared,
    mamba2_output,
    prepare_delta,
    prepare_linear,
    prepare_mamba2,
)

MIN_KERNEL_CHUNK, MAX_KERNEL_CHUNK = 16, 64  # tl.dot needs tiles >= 16; [C, C] tiles stay small


def kernel_chunk(chunk_size: int) -> int:
    """The kernels' chunk (a power of two in [16, 64]) for a requested ``chunk_size`` (a power of
    two): the result does not depend on it, only speed and register use do."""
    return min(max(chunk_size, MIN_KERNEL_CHUNK), MAX_KERNEL_CHUNK)


def triton_log_linear_prepared(
    p: Prepared, chunk_size: int = 64, io_dtype: torch.dtype | None = None, output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """o [B, T, H, Dv] (the compute dtype) and the final level states [B, bit_length(t0 + T), H,
    Dk, Dv] or None, of a prepared base: the fused kernels for a scalar gate or none from position
    0 without a final state, else ``log_linear_by_levels``. ``io_dtype``: the dtype the base
    kernels read q / k / v in (the caller's, e.g. bf16; default the compute dtype); cu_seqlens:
    packed sequences (B = 1, no states) or None."""
    C = kernel_chunk(chunk_size)
    reason = gla_base_unsupported(p, C)
    if reason is not None:
        raise ValueError(f"log-linear attention (Triton): {reason}")
    if p.beta is None and (p.g is None or p.g.dim() == 3) and not output_final_state and p.t0 == 0:
        g = p.g if p.g is not None else torch.zeros_like(p.q[..., 0])  # linear attention: no decay
        return log_linear_scalar_decay_chunk(p.q, p.k, p.v, g, p.lam, chunk_size=C, cu_seqlens=cu_seqlens), None
    return log_linear_by_levels(p, C, io_dtype or p.q.dtype, output_final_state, cu_seqlens)


def _blocks(starts: list[int], lens: list[int], t0: int, block: int, device: torch.device) -> Tensor:
    """cu_seqlens [n + 1] (int32) of sequences packed end to end (first tokens ``starts``, lengths
    ``lens``, positions t0..t0+len-1), each cut at the positions that are multiples of ``block``."""
    first = (t0 // block + 1) * block - t0
    cuts = [s + j for s, n in zip(starts, lens, strict=True) for j in (0, *range(first, n, block))]
    return torch.tensor([*cuts, starts[-1] + lens[-1]], dtype=torch.int32, device=device)


def _base_kernel(p: Prepared, io_dtype: torch.dtype, v: Tensor, cu: Tensor, C: int, final: bool,
                 initial_state: Tensor | None = None):
    """One call of the base's chunked kernel over n copies of the B sequences packed end to end:
    v [1, n*B*T, H, Dv] (each copy its own writes), q / k / gates repeated n times, sequences
    ``cu`` (int32) and an initial state [sequences, H, Dk, Dv] or None. Returns (o, final state or
    None) in the packed layout."""
    n = v.shape[1] // (p.q.shape[0] * p.q.shape[1])
    rep = lambda x, dt=None: None if x is None else x.to(dt or x.dtype).reshape(1, -1, *x.shape[2:]).repeat(
        1, n, *(1,) * (x.dim() - 2))
    q, k = rep(p.q, io_dtype), rep(p.k, io_dtype)
    kw = {"cu_seqlens": cu, "chunk_size": C, "output_final_state": final, "initial_state": initial_state}
    if p.beta is not None:  # (gated) delta rule
        return delta_rule_chunk(q, k, v, rep(p.beta), rep(p.g), **kw)
    if p.g is not None and p.g.dim() == 4:  # GLA's per-key gate
        return gla_chunk(q, k, v, rep(p.g), **kw)
    return scalar_decay_chunk(q, k, v, rep(p.g), **kw)  # scalar decay or none


def _intra(p: Prepared, C: int, output_final_state: bool = False):
    """The levels inside chunks of C tokens aligned to absolute positions (PyTorch): o [B, T, H,
    Dv] and, for the final state, the levels 1..c of position t1 = t0 + T from the last chunk's
    tokens ([B, bit_length(t1), H, Dk, Dv], other levels zero) or None."""
    B, T, H, _ = p.q.shape
    r0 = p.t0 % C
    N = -(-(r0 + T) // C)
    q, k, v, g = (None if x is None else _chunked(x, C, r0, N) for x in (p.q, p.k, p.v, p.g))
    if p.beta is not None:
        W = delta_intra_scores(q, k, g, _chunked(p.beta, C, r0, N))
    else:
        W = _gated_pieces(q, k, g)[0]
    o = intra_output(W, _chunked(p.lam, C, r0, N), v)  # [B, H, N, C, Dv]
    o = o.reshape(B, H, N * C, -1)[:, :, r0 : r0 + T].transpose(1, 2)
    r1 = (p.t0 + T) % C
    if not output_final_state or r1 == 0:  # a chunk boundary: the levels 1..c are empty
        return o, None
    i = max(T - r1, 0)  # the last chunk's tokens of this call (the earlier ones are in S0)
    last = lambda x: None if x is None else x[:, i:]
    tail = Prepared(last(p.q), last(p.k), last(p.v), last(p.g), last(p.beta), last(p.lam), None, p.t0 + i)
    return o, _chunk(tail, C, True)[1]


def _padded_batch(p: Prepared, starts: list[int], lens: list[int]) -> tuple[Prepared, Tensor]:
    """Packed sequences (p [1, total, ...], positions from 0 in each) as a zero-padded batch
    [N, max len] (padding comes after each sequence, so it changes nothing before it), and the
    mask of its real tokens [N, max len] (``out[valid]`` packs a result back)."""
    dev = p.q.device
    ar = torch.arange(max(lens), device=dev)
    valid = ar[None, :] < torch.tensor(lens, device=dev)[:, None]  # [N, Tmax]
    src = (torch.tensor(starts, device=dev)[:, None] + ar[None, :]).clamp(max=p.q.shape[1] - 1)

    def pad(x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        x = x[0, src]  # [N, Tmax, ...]
        return x * valid.view(*valid.shape, *(1,) * (x.dim() - 2)).to(x.dtype)

    return Prepared(pad(p.q), pad(p.k), pad(p.v), pad(p.g), pad(p.beta), pad(p.lam), None, 0), valid


def _intra_packed(p: Prepared, C: int, starts: list[int], lens: list[int]) -> Tensor:
    """``_intra`` of packed sequences, through ``_padded_batch``."""
    padded, valid = _padded_batch(p, starts, lens)
    return _intra(padded, C)[0][valid].unsqueeze(0)


def _chunk_levels(p: Prepared, C: int, io_dtype: torch.dtype, starts: list[int], lens: list[int],
                  pos: Tensor, S_levels: list[Tensor] | None) -> Tensor:
    """The chunk levels c + m (m >= 1) of every query, [B, T, H, Dv], in one call of the base's
    kernel (one copy of the sequences per level, each with its own writes and blocks); with
    ``S_levels`` (the final state's levels, a list) the levels of position t0 + T are added to it."""
    B, T, H, Dk = p.q.shape
    Dv, t0, t1, c = p.v.shape[-1], p.t0, p.t0 + T, C.bit_length() - 1
    out_levels = max((((t0 + n - 1) >> c).bit_length() for n in lens if n), default=0)  # levels read
    state_levels = max(t1.bit_length() - c, 0) if S_levels is not None else 0
    calls = []  # (m, bit, reads, final)
    for m in range(1, max(out_levels, state_levels) + 1):
        j = c + m - 1
        final = m <= state_levels and bool((t1 >> j) & 1)  # position t1 reads it
        # some query reads level c + m: a position in [t0, t0 + n) has bit j (from the bounds, on
        # the host: no device read-back per level)
        reads = m <= out_levels and any((t0 >> j) & 1 or (t0 + n - 1) >> j > t0 >> j for n in lens if n)
        if reads or final:
            bit = ((pos >> j) & 1).view(T, 1, 1)  # 1: reads level c + m; 0: one of its sources
            calls.append((m, bit, reads, final))
    o = p.v.new_zeros(B, T, H, Dv)
    if not calls:
        return o
    v_io = p.v.to(io_dtype)
    v_all = torch.stack([v_io * (1 - bit).to(io_dtype) for _, bit, _, _ in calls])  # [n, B, T, H, Dv]
    cus = [_blocks(starts, lens, t0, C << m, p.q.device) for m, *_ in calls]
    cu = torch.cat([cus[0]] + [x[1:] + i * B * T for i, x in enumerate(cus) if i])
    o_all, ht = _base_kernel(p, io_dtype, v_all.reshape(1, -1, H, Dv), cu, C, state_levels > 0)
    o_all = o_all.view(len(calls), B, T, H, Dv)
    ends = list(itertools.accumulate(len(x) - 1 for x in cus))  # sequences up to each call
    for i, (m, bit, reads, final) in enumerate(calls):
        if reads:
            o = o + (p.lam[..., c + m, None] * bit) * o_all[i].to(o.dtype)
        if final:  # the last block of each sequence holds level c + m of position t1
            blocks = ht[ends[i] - (len(cus[i]) - 1) : ends[i]].view(B, -1, H, Dk, Dv)
            S_levels[c + m - 1] = S_levels[c + m - 1] + blocks[:, -1].to(S_levels[0].dtype)
    return o


def _initial_levels(p: Prepared, C: int, io_dtype: torch.dtype, pos: Tensor,
                    S_levels: list[Tensor] | None) -> Tensor:
    """What the queries read of the initial state's levels, [B, T, H, Dv]: level l of the state at
    t0 is read at level max(l, bit_length(t XOR t0)), carried by the base with no writes (one copy
    of the sequences per level, one call); with ``S_levels`` each carried level is added to the
    final state's level it lands in."""
    B, T, H, Dk = p.q.shape
    Dv, t0, L0, dev = p.v.shape[-1], p.t0, p.S0.shape[1], p.q.device
    cu = packed_sequences(L0 * B, T, dev)[0]
    h0 = p.S0.transpose(0, 1).reshape(L0 * B, H, Dk, Dv)
    zeros = p.v.new_zeros(1, L0 * B * T, H, Dv, dtype=io_dtype)
    o_init, ht = _base_kernel(p, io_dtype, zeros, cu, C, S_levels is not None, initial_state=h0)
    o_init = o_init.view(L0, B, T, H, Dv)
    lev0 = init_levels(pos, t0, L0)  # [T, L0]
    slot0 = init_levels(torch.tensor([t0 + T], device=dev), t0, L0)[0] - 1
    o = p.v.new_zeros(B, T, H, Dv)
    for l in range(L0):
        lam_l = torch.gather(p.lam, -1, lev0[:, l].view(1, T, 1, 1).expand(B, T, H, 1))
        o = o + lam_l * o_init[l].to(o.dtype)
        if S_levels is not None:
            S_levels[slot0[l]] = S_levels[slot0[l]] + ht.view(L0, B, H, Dk, Dv)[l].to(S_levels[0].dtype)
    return o


# The delta rule's fused inference forward (``triton_log_linear_delta``): exact in the interpreter,
# compiled for sm_90a without spills; on an H100 (session 19) its gpu tests passed (float32 and bf16,
# K = 128 and 64) and log-linear Gated DeltaNet's forward took 19.3 ms at 64k instead of the copies'
# 77.7 (4.35 against 18.2 at 16k): on.
FUSED_DELTA_LEVELS = True


def _fused_delta(p: Prepared) -> bool:
    """Whether the call takes the delta rule's fused inference forward (``triton_log_linear_delta``):
    a delta-rule base from position 0, no state in or out, no gradient wanted."""
    return (FUSED_DELTA_LEVELS and p.beta is not None and p.S0 is None and p.t0 == 0
            and not grad_wanted(p.q, p.k, p.v, p.g, p.beta, p.lam))


def _delta_fused(p: Prepared, C: int, io_dtype: torch.dtype, lens: list[int], cu_seqlens: Tensor | None) -> Tensor:
    """Every level of a delta-rule base by the fused inference forward: [B, T, H, Dv]."""
    B, T, H, _ = p.q.shape
    cu, flat = packed_sequences(B, T, p.q.device, cu_seqlens)
    o = delta_log_linear_forward(flat(p.q.to(io_dtype)), flat(p.k.to(io_dtype)), flat(p.v.to(io_dtype)),
                                 flat(p.beta), None if p.g is None else flat(p.g), flat(p.lam), cu, lens, C)
    return o.view(B, T, H, -1).to(p.v.dtype)


# Training (a gradient wanted) with a delta-rule base, positions from 0, no state in or out: the
# per-chunk pieces once in PyTorch and every chunk level by ``triton_log_linear_delta_train``'s walks
# (forward and backward), instead of M copies of the base's kernels on level-masked values. Exact in
# the interpreter (float64, every gradient). On an H100 (2026-12-07, session 21) its GPU tests passed
# (tests/ops/test_triton_log_linear_levels.py -k fused_delta_training: output and every gradient vs
# float64) and it took log-linear Gated DeltaNet's forward + backward from 271.5 to 146.4 ms at 64k
# (flag_ab.py; B = 1, H = 16, K = V = 128, bf16; SDPA's is ~110): on. Memory: the walks keep every
# level's state at every chunk, 2 x M x chunks x H x K x V fp32 (2 x 10.7 GB at 64k).
FUSED_DELTA_TRAINING = True


def _fused_delta_training(p: Prepared) -> bool:
    """Whether the call takes ``_delta_training``: a delta-rule base from position 0, no state in
    or out, a gradient wanted."""
    return (FUSED_DELTA_TRAINING and p.beta is not None and p.S0 is None and p.t0 == 0
            and grad_wanted(p.q, p.k, p.v, p.g, p.beta, p.lam))


def _delta_training(p: Prepared, C: int, io_dtype: torch.dtype, lens: list[int],
                    cu_seqlens: Tensor | None) -> Tensor:
    """Every level of a delta-rule base, differentiable: [B, T, H, Dv] in the compute dtype. The
    chunks' UT transform (``ut_solve``), K̂, W, U, Q̃, the decays and the levels inside chunks
    (``intra_output``) in PyTorch, the chunk levels by ``delta_levels`` (module header of
    ``triton_log_linear_delta_train``). Packed sequences go through a zero-padded batch [N, max
    len] (padding after each sequence changes nothing before it)."""
    if cu_seqlens is not None:
        padded, valid = _padded_batch(p, cu_seqlens[:-1].tolist(), lens)
        return _delta_training(padded, C, io_dtype, [max(lens)] * len(lens), None)[valid].unsqueeze(0)
    B, T, H, Dk = p.q.shape
    Dv, N, c = p.v.shape[-1], -(-T // C), C.bit_length() - 1
    g = p.g if p.g is not None else torch.zeros_like(p.beta)
    q, k, v, g, beta = (_chunked(x, C, 0, N) for x in (p.q, p.k, p.v, g, p.beta))  # [B, H, N, C, *]
    G = g.cumsum(dim=3)
    D = _decay_matrix(G)
    eye = torch.eye(C, dtype=q.dtype, device=q.device).expand(*q.shape[:3], C, C)
    Tb, w = ut_solve(k, beta, D, torch.cat([eye, k * G[..., None].exp()], -1)).split([C, Dk], dim=-1)
    QK = (q @ k.transpose(-1, -2)) * D
    o = intra_output(QK @ Tb, _chunked(p.lam, C, 0, N), v)  # the levels inside chunks
    unchunk = lambda x: x.reshape(B, H, N * C, -1)[:, :, :T].transpose(1, 2)  # -> [B, T, H, *]
    o = unchunk(o)
    M = ((T - 1) // C).bit_length()
    if M == 0:  # (prepare_* checked lambda_levels: L >= bit_length(T - 1) + 1 = c + M + 1)
        return o
    qt = q * G[..., None].exp() - QK @ w  # the effective queries Q̃
    khat = k * (G[..., -1:] - G)[..., None].exp()  # K̂ = K ⊙ e^{G_last - G}
    flat = lambda x: unchunk(x).reshape(1, B * T, H, -1).to(io_dtype)
    decay = G[..., -1].exp().transpose(1, 2).reshape(B * N, H)  # e^{G_last}, chunks in chunk_layout's order
    cu = packed_sequences(B, T, p.q.device)[0]
    om = delta_levels(flat(khat), flat(w), flat(Tb @ v), flat(qt), decay, cu, M, C)  # [M, B*T, H, Dv]
    lam = p.lam[..., c + 1 : c + 1 + M].reshape(B * T, H, M).to(om.dtype)  # λ^(c+m), m = 1..M
    return o + torch.einsum("mthv,thm->thv", om, lam).view(B, T, H, Dv).to(o.dtype)


def log_linear_by_levels(p: Prepared, C: int, io_dtype: torch.dtype, output_final_state: bool = False,
                         cu_seqlens: Tensor | None = None):
    """Log-linear attention over any base with a chunked kernel: the levels inside chunks of C
    tokens in PyTorch, each chunk level by one call of the base's kernel with the level's blocks as
    ``cu_seqlens`` (all levels in one call, as copies of the sequences packed end to end, so they
    run in parallel), and the levels of an initial state by one more call that carries each (no
    writes) from position t0 (module header). p: prepared (q scaled); C: a power of two in [16, 64];
    cu_seqlens: [N+1] offsets of packed sequences in T (B = 1; positions from 0 in each, no initial
    or final state) or None. Returns o [B, T, H, Dv] in the compute dtype and the final level
    states [B, bit_length(t0 + T), H, Dk, Dv] (the FenwickState's S) or None."""
    B, T, H, Dk = p.q.shape
    Dv, dev, t0, t1 = p.v.shape[-1], p.q.device, p.t0, p.t0 + T
    if cu_seqlens is not None and (B != 1 or p.S0 is not None or output_final_state):
        raise ValueError("log_linear_by_levels: packed sequences (cu_seqlens) take B = 1 and no "
                         "initial or final state")
    cu = [b * T for b in range(B + 1)] if cu_seqlens is None else cu_seqlens.tolist()
    starts, lens = cu[:-1], [b - a for a, b in itertools.pairwise(cu)]
    if not output_final_state and _fused_delta(p):
        return _delta_fused(p, C, io_dtype, lens, cu_seqlens), None
    if not output_final_state and _fused_delta_training(p):
        return _delta_training(p, C, io_dtype, lens, cu_seqlens), None
    if cu_seqlens is None:
        pos = t0 + torch.arange(T, device=dev)  # [T]: every row alike
        o, S = _intra(p, C, output_final_state)
    else:
        seq = torch.repeat_interleave(torch.arange(len(lens), device=dev), torch.tensor(lens, device=dev))
        pos = torch.arange(T, device=dev) - torch.tensor(starts, device=dev)[seq]  # within its sequence
        o, S = _intra_packed(p, C, starts, lens), None
    S_levels = None
    if output_final_state:
        S = p.q.new_zeros(B, t1.bit_length(), H, Dk, Dv) if S is None else S
        S_levels = list(S.unbind(1))
    o = o + _chunk_levels(p, C, io_dtype, starts, lens, pos, S_levels)
    if p.S0 is not None:
        o = o + _initial_levels(p, C, io_dtype, pos, S_levels)
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
    cu_seqlens: Tensor | None = None,
) -> Tensor:
    """Log-linear Mamba-2 on the GPU, positions from 0, no state in or out (the chunk op takes
    states); for training on packed variable-length sequences.

    x: [B, T, H, P]; dt: [B, T, H] (>= 0); A: [H] (<= 0); B, C: [B, T, G, N], G | H; D: [H] or
    None; lambda_levels: [B, T, H, L], L >= bit_length(T - 1) + 1; cu_seqlens: [N+1] offsets of
    sequences packed into T (B = 1; positions restart at 0 in each) or None. Returns y [B, T, H, P].
    """
    op = "triton_log_linear_mamba2"
    if cu_seqlens is not None:
        check_cu_seqlens(op, cu_seqlens, x.shape[0], x.shape[1])
    p = prepare_mamba2(op, x, dt, A, B, C, D, lambda_levels, None)
    o = triton_log_linear_prepared(p, chunk_size, x.dtype, cu_seqlens=cu_seqlens)[0]
    return mamba2_output(o, x, D).to(x.dtype)


def triton_log_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lambda_levels: Tensor,
    *,
    g: Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
    cu_seqlens: Tensor | None = None,
) -> Tensor:
    """Log-linear attention on the GPU over linear attention (g None), a scalar decay (g [B, T, H])
    or GLA (g [B, T, H, Dk]); positions from 0, no state; cu_seqlens as
    ``triton_log_linear_mamba2``'s. Returns o [B, T, H, Dv] in q's dtype."""
    op = "triton_log_linear_attention"
    if cu_seqlens is not None:
        check_cu_seqlens(op, cu_seqlens, q.shape[0], q.shape[1])
    p = prepare_linear(op, q, k, v, lambda_levels, g, scale, None)
    return triton_log_linear_prepared(p, chunk_size, q.dtype, cu_seqlens=cu_seqlens)[0].to(q.dtype)


def triton_log_linear_gated_deltanet(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    lambda_levels: Tensor,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
    cu_seqlens: Tensor | None = None,
    use_qk_l2norm: bool = False,
) -> Tensor:
    """Log-linear Gated DeltaNet on the GPU, positions from 0, no state; arguments as
    ``naive_log_linear_gated_deltanet``, cu_seqlens as ``triton_log_linear_mamba2``'s. Returns
    o [B, T, H, Dv] in q's dtype."""
    op = "triton_log_linear_gated_deltanet"
    if cu_seqlens is not None:
        check_cu_seqlens(op, cu_seqlens, q.shape[0], q.shape[1])
    p = prepare_delta(op, q, k, v, g, beta, lambda_levels, scale, None, use_qk_l2norm)
    return triton_log_linear_prepared(p, chunk_size, q.dtype, cu_seqlens=cu_seqlens)[0].to(q.dtype)


__all__ = [
    "kernel_chunk",
    "log_linear_by_levels",
    "triton_log_linear_attention",
    "triton_log_linear_gated_deltanet",
    "triton_log_linear_mamba2",
    "triton_log_linear_prepared",
]

"""Log-linear attention, chunkwise form in O(T log T) (Guo et al. 2025, §3.3). Derivation: README.

Chunks of C = 2^c tokens aligned to absolute positions (the first chunk is left-padded when the
sequence continues a state at t0 % C != 0), so a chunk is a Fenwick bucket of level c + 1 and:
  * inside a chunk, level(t, s) = bit_length(i XOR j) <= c (local indices i >= j):
        O_intra = (W ⊙ M^H_local) V,  W the base's intra-chunk attention matrix;
  * across chunks, the level is c + m with m = bit_length(n XOR n') of the chunk indices. For each
    m the sources of level c + m are the 2^(m-1) chunks of the sibling block, carried by one state
    per level that is reset every 2^m chunks and fed only by chunks whose bit m-1 is 0:
        Z^(m) <- P_n (Z^(m) [n % 2^m != 0]) + [bit m-1 of n = 0] U_n
    and read, before chunk n, by its queries when bit m-1 of n is 1:
        O_inter,t = sum_m lambda_t^(c+m) [bit m-1 of n] Qeff_t Z^(m).
Each base supplies, per chunk: W [C, C], Qeff [C, Dk] (o_t = Qeff_t S for a state S entering the
chunk), the chunk transition P (diag [Dk] or [Dk, Dk]) and Ksrc [Dk, C] (U_n = Ksrc V).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import kernel_unsupported, wants_triton
from longctx.ops.deltanet.chunk import ut_solve
from longctx.ops.gla.chunk import _intra_chunk_scores, _sub_chunk_size
from longctx.ops.log_linear.fenwick import (
    FenwickState,
    bit_length,
    check_power_of_two,
    init_levels,
    make_state,
)
from longctx.ops.log_linear.inputs import (
    Prepared,
    mamba2_output,
    prepare_delta,
    prepare_linear,
    prepare_mamba2,
)
from longctx.ops.log_linear.recurrent import (
    recurrent_log_linear_attention,
    recurrent_log_linear_gated_deltanet,
    recurrent_log_linear_mamba2,
)


def _chunked(x: Tensor, C: int, r0: int, N: int) -> Tensor:
    """[B, T, H, *] -> [B, H, N, C, *]: r0 zeros before, zeros after up to N * C tokens."""
    x = x.transpose(1, 2)
    B, H, T = x.shape[:3]
    before = x.new_zeros(B, H, r0, *x.shape[3:])
    after = x.new_zeros(B, H, N * C - r0 - T, *x.shape[3:])
    return torch.cat([before, x, after], dim=2).reshape(B, H, N, C, *x.shape[3:])


def _decay_matrix(G: Tensor) -> Tensor:
    """D_ij = exp(G_i - G_j) for i >= j, else 0 (masked before the exp): G [..., C] -> [..., C, C]."""
    C = G.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=G.device).tril()
    return torch.where(causal, G[..., :, None] - G[..., None, :], float("-inf")).exp()


def delta_intra_scores(q: Tensor, k: Tensor, g: Tensor, beta: Tensor) -> Tensor:
    """The gated delta rule's intra-chunk matrix W = (Q K^T ⊙ D) T_b alone (``_delta_pieces``
    without the chunk transitions): q, k [B, H, N, C, Dk]; g, beta [B, H, N, C] -> [.., C, C]."""
    C = q.shape[3]
    D = _decay_matrix(g.cumsum(dim=3))
    eye = torch.eye(C, dtype=q.dtype, device=q.device).expand(*q.shape[:3], C, C)
    return ((q @ k.transpose(-1, -2)) * D) @ ut_solve(k, beta, D, eye)


def intra_output(W: Tensor, lam: Tensor, v: Tensor) -> Tensor:
    """The Fenwick levels inside a chunk: O = (W ⊙ M^H) V with M^H_ij = lambda_i^(bit_length(i XOR j)).
    W [B, H, N, C, C]; lam [B, H, N, C, L] (L > log2 C); v [B, H, N, C, Dv] -> [B, H, N, C, Dv]."""
    C = W.shape[-1]
    i = torch.arange(C, device=W.device)
    lev = bit_length(i[:, None] ^ i[None, :]).expand(*W.shape)
    return (W * torch.gather(lam, -1, lev)) @ v


def _gated_pieces(q: Tensor, k: Tensor, g: Tensor | None):
    """Diagonal transitions A_t = diag(exp(g_t)) (GLA §4.2; Mamba-2 §6 for a scalar gate).
    q, k [B, H, N, C, Dk]; g None, [B, H, N, C] or [B, H, N, C, Dk] (padding has g = 0).
    Returns W [.., C, C], Qeff [.., C, Dk], the diagonal P [.., Dk or 1], Ksrc [.., Dk, C]."""
    C = q.shape[3]
    if g is None:  # linear attention: no decay
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        W = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)
        return W, q, q.new_ones(*q.shape[:3], 1), k.transpose(-1, -2)
    G = g.cumsum(dim=3)  # chunk-local cumulative log-gate, <= 0 and non-increasing
    if g.dim() == 5:  # per key dim: GLA's stable secondary chunking builds W
        W = _intra_chunk_scores(q, k, G, _sub_chunk_size(C))
    else:  # scalar per head: W_ij = q_i.k_j exp(G_i - G_j)
        W = (q @ k.transpose(-1, -2)) * _decay_matrix(G)
        G = G[..., None]  # [B, H, N, C, 1], broadcast over Dk
    G_last = G[..., -1, :]  # [B, H, N, Dk or 1]
    Ksrc = (k * (G_last[..., None, :] - G).exp()).transpose(-1, -2)  # K ⊙ exp(G_{C-1} - G)
    return W, q * G.exp(), G_last.exp(), Ksrc


def _delta_pieces(q: Tensor, k: Tensor, g: Tensor, beta: Tensor):
    """The gated delta rule through the UT transform (DeltaNet, Yang et al. 2024, §3.3; GDN §3.3).
    q, k [B, H, N, C, Dk]; g, beta [B, H, N, C]. With decays D_ij = exp(G_i - G_j) (i >= j):
        T_b  = (I + StrictTril(diag(beta) (K K^T ⊙ D)))^{-1} diag(beta),  Wk = T_b (exp(G) ⊙ K)
        W    = (Q K^T ⊙ D) T_b,   Qeff = exp(G) ⊙ Q - (Q K^T ⊙ D) Wk
        P    = exp(G_{C-1}) I - K_end^T Wk,   Ksrc = K_end^T T_b,   K_end = exp(G_{C-1} - G) ⊙ K
    """
    C = q.shape[3]
    G = g.cumsum(dim=3)
    D = _decay_matrix(G)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    sol = ut_solve(k, beta, D, torch.cat([eye.expand(*q.shape[:3], C, C), k * G[..., None].exp()], -1))
    Tb, Wk = sol.split([C, q.shape[-1]], dim=-1)  # [.., C, C], [.., C, Dk]
    QK = (q @ k.transpose(-1, -2)) * D
    k_end = k * (G[..., -1:] - G)[..., None].exp()
    P = G[..., -1].exp()[..., None, None] * torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    P = P - k_end.transpose(-1, -2) @ Wk  # [B, H, N, Dk, Dk]
    return QK @ Tb, q * G[..., None].exp() - QK @ Wk, P, k_end.transpose(-1, -2) @ Tb


def _chunk(p: Prepared, C: int, output_final_state: bool) -> tuple[Tensor, Tensor | None]:
    """o [B, T, H, Dv] and the final level states [B, bit_length(t0 + T), H, Dk, Dv] or None."""
    B, T, H, Dk = p.q.shape
    Dv = p.v.shape[-1]
    t0, t1, c = p.t0, p.t0 + T, C.bit_length() - 1
    r0, n0 = t0 % C, t0 // C  # left padding; absolute index of the first chunk
    N = -(-(r0 + T) // C)
    M = (n0 + N).bit_length()  # chunk levels m = 1..M (up to the chunk holding t1)
    L0 = 0 if p.S0 is None else p.S0.shape[1]
    dev = p.q.device

    def chunked(x: Tensor | None) -> Tensor | None:
        return None if x is None else _chunked(x, C, r0, N)

    q, k, v, g = chunked(p.q), chunked(p.k), chunked(p.v), chunked(p.g)
    if p.beta is None:
        W, Qeff, P, Ksrc = _gated_pieces(q, k, g)
    else:
        W, Qeff, P, Ksrc = _delta_pieces(q, k, g, chunked(p.beta))
    lam = chunked(p.lam)  # [B, H, N, C, L]; pad the levels the padded tokens may address
    lam = torch.cat([lam, lam.new_zeros(*lam.shape[:-1], max(0, c + M + 1 - lam.shape[-1]))], -1)

    o = intra_output(W, lam, v)  # [B, H, N, C, Dv]

    # chunk levels: chunk n reads Z^(m) iff bit m-1 of n is set; Z^(m) is fed while it is 0
    n_abs = n0 + torch.arange(N, device=dev)
    m = torch.arange(1, M + 1, device=dev)
    reads = ((n_abs[:, None] >> (m - 1)) & 1).bool()  # [N, M]
    keep = (n_abs[:, None] % (1 << m)) != 0  # reset every 2^m chunks
    weights = lam[..., c + 1 : c + M + 1] * reads[:, None].to(lam.dtype)  # [B, H, N, C, M]
    keep = torch.cat([keep, keep.new_ones(N, L0)], -1).to(lam.dtype)[..., None, None]
    feed = torch.cat([~reads, reads.new_zeros(N, L0)], -1).to(lam.dtype)[..., None, None]
    X = q.new_zeros(B, H, M, Dk, Dv)
    if L0:  # the initial levels: level max(l, bit_length(t XOR t0)) for the query at t
        pos = (t0 - r0 + torch.arange(N * C, device=dev)).view(N, C)
        lev0 = init_levels(pos.flatten(), t0, L0).view(N, C, L0).expand(B, H, N, C, L0)
        weights = torch.cat([weights, torch.gather(lam, -1, lev0)], -1)
        X = torch.cat([X, p.S0.transpose(1, 2)], 2)  # [B, H, M + L0, Dk, Dv]

    U = Ksrc @ v  # [B, H, N, Dk, Dv], each chunk's sources at its end
    starts = []
    for n in range(N):  # the state passing, all levels at once
        starts.append(X)
        X = _transport(P[:, :, n], X * keep[n]) + feed[n] * U[:, :, n, None]
    Xs = torch.stack(starts, dim=2)  # [B, H, N, J, Dk, Dv]
    J = Xs.shape[3]
    qw = (weights[..., None] * Qeff[..., None, :]).reshape(B, H, N, C, J * Dk)
    o = o + qw @ Xs.reshape(B, H, N, J * Dk, Dv)
    o = o.reshape(B, H, N * C, Dv)[:, :, r0 : r0 + T].transpose(1, 2)
    if not output_final_state:
        return o, None

    # final state: the levels of the query at t1 (chunk n1, local offset r1)
    n1, r1 = divmod(r0 + T, C)
    n1_abs = torch.tensor(n0 + n1, device=dev)
    if r1:  # t1 inside the last chunk: carry its entering levels through its first r1 tokens
        X = _transport(P[:, :, n1], starts[n1])
    n_out = t1.bit_length()
    slot = torch.cat([m + c - 1, init_levels(torch.tensor([t1], device=dev), t0, L0)[0] - 1])
    use = torch.cat([((n1_abs >> (m - 1)) & 1).bool(), m.new_ones(L0, dtype=torch.bool)])
    S = X.new_zeros(B, H, n_out, Dk, Dv).index_add(2, slot[use], X[:, :, use])
    if r1:  # the sources of the last chunk before t1, by level bit_length(r1 XOR j)
        i = torch.arange(C, device=dev)
        onehot = (bit_length(r1 ^ i)[:, None] - 1 == torch.arange(n_out, device=dev)) & (i < r1)[:, None]
        S = S + torch.einsum("bhdj,bhje,jl->bhlde", Ksrc[:, :, n1], v[:, :, n1], onehot.to(v.dtype))
    return o, S.transpose(1, 2)


def _transport(P: Tensor, X: Tensor) -> Tensor:
    """P_n X for every level: P [B, H, Dk] (diagonal) or [B, H, Dk, Dk]; X [B, H, J, Dk, Dv]."""
    if P.dim() == 3:
        return P[:, :, None, :, None] * X
    return P[:, :, None] @ X


def gla_base_unsupported(p: Prepared, C: int) -> str | None:
    """Why the GLA base cannot run on the GPU with chunks of ``C``, or None. The GLA kernel with
    chunks of 16 (sub-chunks of 16) does not compile on an H100: Triton 3.6 asserts in its
    TritonGPUCoalesce pass on ``_bwd_dqk_kernel`` (2026-12-06; exact in the interpreter). Chunks
    of 32 / sub-chunks of 16 passed the kernel's own GPU test but not yet the level path's: a GPU
    runs the chunks of 64 that passed both."""
    if p.g is not None and p.g.dim() == 4 and p.q.is_cuda and C < 64:
        return f"the GLA base runs on a GPU with chunk_size 64 only (got {C}: smaller chunks failed its GPU tests)"
    return None


def _triton_unsupported(p: Prepared, C: int) -> str | None:
    """Why the log-linear Triton paths cannot run this call (chunks of ``C``), or None."""
    return gla_base_unsupported(p, C) or kernel_unsupported(p.q.shape[-1], p.v.shape[-1])


def chunk_log_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lambda_levels: Tensor,
    *,
    g: Tensor | None = None,
    scale: float | None = None,
    initial_state: FenwickState | tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[Tensor, FenwickState | None]:
    """Chunked log-linear attention (linear attention for g None, else a gated base).

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; lambda_levels: [B, T, H, L]; g: None, [B, T, H] or
    [B, T, H, Dk] (<= 0); initial_state: FenwickState; chunk_size: a power of two; backend:
    "auto" / "torch" / "triton" (``longctx.ops.common.backend``).
    Returns o [B, T, H, Dv] and the final FenwickState or None.
    """
    op = "chunk_log_linear_attention"
    C = check_power_of_two(chunk_size)
    p = prepare_linear(op, q, k, v, lambda_levels, g, scale, initial_state)
    if q.shape[1] == 0:
        return recurrent_log_linear_attention(
            q, k, v, lambda_levels, g=g, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state,
        )
    o, S = _chunk_or_kernel(op, p, C, output_final_state, backend, q, k, v, g, lambda_levels)
    return o.to(q.dtype).contiguous(), (None if S is None else make_state(S, p.t0 + q.shape[1]))


def _chunk_or_kernel(op: str, p: Prepared, C: int, output_final_state: bool, backend: str | None,
                     *tensors: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """A prepared base through the Triton kernels where ``backend`` asks for them and they can run
    it, else the PyTorch chunked form: o [B, T, H, Dv] (compute dtype) and the final level states
    [B, bit_length(t0 + T), H, Dk, Dv] or None."""
    if wants_triton(op, backend, *tensors, supported=_triton_unsupported(p, C)):
        from longctx.ops.log_linear.triton import triton_log_linear_prepared

        return triton_log_linear_prepared(p, C, tensors[0].dtype, output_final_state)
    return _chunk(p, C, output_final_state)


def chunk_log_linear_gated_deltanet(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    lambda_levels: Tensor,
    *,
    scale: float | None = None,
    initial_state: FenwickState | tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    use_qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, FenwickState | None]:
    """Chunked log-linear Gated DeltaNet; arguments as ``naive_log_linear_gated_deltanet``;
    ``backend`` as ``chunk_log_linear_attention``'s."""
    op = "chunk_log_linear_gated_deltanet"
    C = check_power_of_two(chunk_size)
    p = prepare_delta(op, q, k, v, g, beta, lambda_levels, scale, initial_state, use_qk_l2norm)
    if q.shape[1] == 0:
        return recurrent_log_linear_gated_deltanet(
            q, k, v, g, beta, lambda_levels, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, use_qk_l2norm=use_qk_l2norm,
        )
    o, S = _chunk_or_kernel(op, p, C, output_final_state, backend, q, k, v, g, beta, lambda_levels)
    return o.to(q.dtype).contiguous(), (None if S is None else make_state(S, p.t0 + q.shape[1]))


def chunk_log_linear_mamba2(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    lambda_levels: Tensor,
    *,
    D: Tensor | None = None,
    initial_state: FenwickState | tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[Tensor, FenwickState | None]:
    """Chunked log-linear Mamba-2; arguments as ``naive_log_linear_mamba2``; ``backend`` "auto" /
    "torch" / "triton" (``longctx.ops.common.backend``)."""
    op = "chunk_log_linear_mamba2"
    Cs = check_power_of_two(chunk_size)
    p = prepare_mamba2(op, x, dt, A, B, C, D, lambda_levels, initial_state)
    if x.shape[1] == 0:
        return recurrent_log_linear_mamba2(
            x, dt, A, B, C, lambda_levels, D=D, initial_state=initial_state,
            output_final_state=output_final_state,
        )
    o, S = _chunk_or_kernel(op, p, Cs, output_final_state, backend, x, dt, A, B, C, D, lambda_levels)
    y = mamba2_output(o, x, D).to(x.dtype).contiguous()
    return y, (None if S is None else make_state(S.transpose(-1, -2), p.t0 + x.shape[1]))


__all__ = [
    "chunk_log_linear_attention",
    "chunk_log_linear_gated_deltanet",
    "chunk_log_linear_mamba2",
]

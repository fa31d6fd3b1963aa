"""Gated Linear Attention, chunkwise-parallel form (Yang et al. 2024, §4.2) with the secondary
(sub-chunk) level of §4.3 for numerical stability in float32. Derivation in README.md.

Per chunk of C tokens, with the chunk-local cumulative log-gate G_i = sum_{t<=i} g_t (<= 0, and
non-increasing in i, per key dimension d):
    intra:  A_ij = sum_d q_id k_jd exp(G_id - G_jd)  (i >= j),   O_intra = A V
    inter:  O_inter = (Q ⊙ exp(G)) S_n
    state:  S_{n+1} = diag(exp(G_{C-1})) S_n + (K ⊙ exp(G_{C-1} - G))^T V
Every exp here has a non-positive argument. A is built per sub-chunk of c tokens (c | C, c <= 16):
the c x c diagonal blocks exactly (a [c, c, Dk] tensor), the off-diagonal blocks factorised
around r = the first token of the query's sub-chunk a:
    exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_j),   i >= r > j,
so both factors are <= 1 and no exp(+large) is ever formed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import kernel_unsupported, wants_triton
from longctx.ops.common.checks import (
    check_chunk_size,
    check_gate,
    check_qkv,
    check_state,
    default_scale,
)
from longctx.ops.common.chunking import pad_to_multiple
from longctx.ops.gla.recurrent import recurrent_gla

MAX_SUB_CHUNK = 16  # the exact pairwise [c, c, Dk] tensor is only formed for c <= 16


def _sub_chunk_size(chunk_size: int) -> int:
    """Largest divisor of ``chunk_size`` that is <= MAX_SUB_CHUNK."""
    return max(c for c in range(1, min(chunk_size, MAX_SUB_CHUNK) + 1) if chunk_size % c == 0)


def _intra_chunk_scores(q: Tensor, k: Tensor, G: Tensor, c: int) -> Tensor:
    """A_ij = sum_d q_id k_jd exp(G_id - G_jd) for i >= j, else 0 (§4.2, stable as in §4.3).

    q, k, G: [B, H, N, C, Dk] (q already scaled, G chunk-local cumulative log-gates).
    Returns A: [B, H, N, C, C]. Peak extra memory O(B H T (C/c + c) Dk).
    """
    B, H, N, C, Dk = q.shape
    n = C // c
    qs, ks, Gs = (x.view(B, H, N, n, c, Dk) for x in (q, k, G))
    dev = q.device

    # diagonal sub-blocks, exact pairwise: exp(G_i - G_j) with i >= j inside one sub-chunk
    causal = torch.ones(c, c, dtype=torch.bool, device=dev).tril()[:, :, None]  # [c, c, 1]
    diff = Gs.unsqueeze(-2) - Gs.unsqueeze(-3)  # [B, H, N, n, c(i), c(j), Dk]
    decay = torch.where(causal, diff, float("-inf")).exp()  # masked before exp
    A_diag = (qs.unsqueeze(-2) * ks.unsqueeze(-3) * decay).sum(-1)  # [B, H, N, n, c, c]

    # off-diagonal sub-blocks: reference r_a = first token of query sub-chunk a
    G_ref = Gs[..., 0, :]  # [B, H, N, n, Dk]
    q_off = qs * (Gs - G_ref.unsqueeze(-2)).exp()  # q_i exp(G_i - G_r), exponent <= 0
    # k_j exp(G_r - G_j) for every key j of the chunk strictly before sub-chunk a (else 0)
    before = torch.arange(C, device=dev)[None, :] < (torch.arange(n, device=dev) * c)[:, None]
    expo = G_ref.unsqueeze(-2) - G.unsqueeze(3)  # [B, H, N, n(a), C(j), Dk]
    k_off = k.unsqueeze(3) * torch.where(before[:, :, None], expo, float("-inf")).exp()
    A_off = q_off @ k_off.transpose(-1, -2)  # [B, H, N, n(a), c(i), C(j)]

    # place the diagonal blocks: A[a, i, b, j] = A_off[a, i, b, j] + [a == b] A_diag[a, i, j]
    eye = torch.eye(n, dtype=q.dtype, device=dev)[:, None, :, None]  # [n, 1, n, 1]
    A = A_off.view(B, H, N, n, c, n, c) + A_diag.unsqueeze(-2) * eye
    return A.view(B, H, N, C, C)


def chunk_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise GLA.

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; g: [B, T, H, Dk] log forget gate (<= 0);
    initial_state: S [B, H, Dk, Dv]. Returns o [B, T, H, Dv] and the final S or None.
    ``backend``: "auto" / "torch" / "triton" (``longctx.ops.common.backend``); the Triton kernel
    (``longctx.ops.gla.triton``) uses its own chunk size, the result does not depend on it.
    """
    op = "chunk_gla"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    C = check_chunk_size(chunk_size)
    check_gate(op, "g", g, (B, T, H, Dk), log_space=True)
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
    if T == 0:  # nothing to chunk
        return recurrent_gla(
            q, k, v, g, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state,
        )
    scale = default_scale(scale, Dk)
    if wants_triton(op, backend, q, k, v, g, initial_state, supported=kernel_unsupported(Dk, Dv)):
        from longctx.ops.gla.triton import triton_gla

        return triton_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                          output_final_state=output_final_state)
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32

    def chunked(x: Tensor, mult: float = 1.0) -> Tensor:  # [B, T, H, D] -> [B, H, N, C, D]
        x = pad_to_multiple(x.to(dtype).transpose(1, 2) * mult, C, dim=2)[0]  # zero-padded
        return x.view(B, H, -1, C, x.shape[-1])

    # padded tokens have g = 0 (no decay) and k = v = 0 (no write): the final state is exact
    qc, kc, vc, gc = chunked(q, scale), chunked(k), chunked(v), chunked(g)
    N = qc.shape[2]
    G = gc.cumsum(dim=3)  # [B, H, N, C, Dk], chunk-local cumulative log-gate
    o = _intra_chunk_scores(qc, kc, G, _sub_chunk_size(C)) @ vc  # [B, H, N, C, Dv]

    G_last = G[..., -1:, :]  # [B, H, N, 1, Dk], log of the whole chunk's decay
    # §4.2: S_{n+1} = (gamma_n^T 1) ⊙ S_n + (K ⊙ Gamma)^T V, Gamma_j = exp(G_last - G_j)
    U = (kc * (G_last - G).exp()).transpose(-1, -2) @ vc  # [B, H, N, Dk, Dv]
    chunk_decay = G_last.exp().transpose(-1, -2)  # [B, H, N, Dk, 1]
    S = q.new_zeros(B, H, Dk, Dv, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    starts = []
    for n in range(N):
        starts.append(S)
        S = chunk_decay[:, :, n] * S + U[:, :, n]
    # §4.2: O_inter = (Q ⊙ Lambda) S_n, Lambda_i = exp(G_i)
    o = o + (qc * G.exp()) @ torch.stack(starts, dim=2)
    o = o.reshape(B, H, N * C, Dv)[:, :, :T].transpose(1, 2).to(q.dtype).contiguous()
    return o, (S if output_final_state else None)

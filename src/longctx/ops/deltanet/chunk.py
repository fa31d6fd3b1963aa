"""DeltaNet, chunkwise-parallel form (Yang et al. 2024, §3.2-3.3: WY representation computed with
the UT transform). The same core serves Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025, §3.3):
DeltaNet is the special case g = 0. Derivation in README.md.

Per chunk of C tokens with chunk-start state S_n and chunk-local cumulative log-gate
G_i = sum_{t<=i} g_t (G = 0 for DeltaNet):
    A_ij   = beta_i (k_i^T k_j) exp(G_i - G_j)                 (i > j, else 0)
    [U, W] = (I + A)^{-1} diag(beta) [V, exp(G) ⊙ K]           (UT transform)
    Delta  = U - W S_n                                         (the chunk's pseudo-values)
    O      = (Q ⊙ exp(G)) S_n + (Q K^T ⊙ exp(G_i - G_j) [i >= j]) Delta
    S_{n+1} = exp(G_{C-1}) S_n + (K ⊙ exp(G_{C-1} - G))^T Delta
Every exp has a non-positive argument (masked to -inf above the diagonal before the exp).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import kernel_unsupported, wants_triton
from longctx.ops.common.checks import check_chunk_size, check_qkv, check_state, default_scale
from longctx.ops.common.chunking import pad_to_multiple
from longctx.ops.deltanet.checks import check_beta, prepare_qk
from longctx.ops.deltanet.recurrent import recurrent_delta_rule


def ut_solve(k: Tensor, beta: Tensor, decay: Tensor, rhs: Tensor) -> Tensor:
    """The UT transform applied to ``rhs`` (DeltaNet §3.3; GDN §3.3):
    ``(I + StrictTril(diag(beta) (K K^T ⊙ decay)))^{-1} diag(beta) rhs``, by one triangular solve.

    k: [..., C, Dk]; beta: [..., C]; decay: [..., C, C] (or broadcastable, 1 where ungated);
    rhs: [..., C, X]. Returns [..., C, X].
    """
    C = k.shape[-2]
    A = torch.tril(beta.unsqueeze(-1) * (k @ k.transpose(-1, -2)) * decay, diagonal=-1)
    eye = torch.eye(C, dtype=k.dtype, device=k.device)
    return torch.linalg.solve_triangular(A + eye, beta.unsqueeze(-1) * rhs, upper=False,
                                         unitriangular=True)


def chunk_delta_core(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, S0: Tensor, C: int
) -> tuple[Tensor, Tensor]:
    """Unchecked chunked (gated) delta rule, all tensors in the compute dtype.

    q (already scaled), k (unit-norm): [B, T, H, Dk]; v: [B, T, H, Dv]; beta: [B, T, H];
    g: [B, T, H] log-gate (<= 0) or None for DeltaNet; S0: [B, H, Dk, Dv]; T >= 1.
    Returns o [B, T, H, Dv] and the final S [B, H, Dk, Dv].
    """
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]

    def chunked(x: Tensor) -> Tensor:  # [B, T, H, *] -> [B, H, N, C, *], zero-padded
        x = pad_to_multiple(x.transpose(1, 2), C, dim=2)[0]
        return x.view(B, H, -1, C, *x.shape[3:])

    # padded tokens have beta = k = v = g = 0: no write and no decay, so the final state is exact
    qc, kc, vc, bc = chunked(q), chunked(k), chunked(v), chunked(beta)  # bc [B, H, N, C]
    N = qc.shape[2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # i >= j
    if g is None:
        decay = causal.to(q.dtype)  # [C, C]
        q_dec, k_dec, k_last, chunk_decay = qc, kc, kc, None
    else:
        G = chunked(g).cumsum(dim=-1)  # [B, H, N, C], chunk-local cumulative log-gate (<= 0)
        diff = G.unsqueeze(-1) - G.unsqueeze(-2)  # G_i - G_j, <= 0 where i >= j
        decay = torch.where(causal, diff, float("-inf")).exp()  # [B, H, N, C, C]
        q_dec = qc * G.exp().unsqueeze(-1)  # Q ⊙ exp(G)
        k_dec = kc * G.exp().unsqueeze(-1)  # exp(G) ⊙ K
        k_last = kc * (G[..., -1:] - G).exp().unsqueeze(-1)  # K ⊙ exp(G_{C-1} - G)
        chunk_decay = G[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]

    # [U, W] = UT transform of [V, exp(G) ⊙ K]
    UW = ut_solve(kc, bc, decay, torch.cat([vc, k_dec], dim=-1))
    U, W = UW.split([Dv, Dk], dim=-1)  # [B, H, N, C, Dv], [B, H, N, C, Dk]

    S = S0
    starts, deltas = [], []
    for n in range(N):  # state passing between chunks; everything else is batched over chunks
        starts.append(S)
        delta = U[:, :, n] - W[:, :, n] @ S  # pseudo-values u_i - w_i^T S_n, [B, H, C, Dv]
        deltas.append(delta)
        S = S if chunk_decay is None else chunk_decay[:, :, n] * S
        S = S + k_last[:, :, n].transpose(-1, -2) @ delta
    Delta = torch.stack(deltas, dim=2)  # [B, H, N, C, Dv]
    P = (qc @ kc.transpose(-1, -2)) * decay  # causal intra-chunk scores, [B, H, N, C, C]
    o = q_dec @ torch.stack(starts, dim=2) + P @ Delta  # inter-chunk + intra-chunk
    o = o.reshape(B, H, N * C, Dv)[:, :, :T].transpose(1, 2)
    return o, S


def chunk_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    use_qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise DeltaNet.

    q, k: [B, T, H, Dk] (k unit-norm, or ``use_qk_l2norm=True`` to normalise q and k here);
    v: [B, T, H, Dv]; beta: [B, T, H] in [0, 2]; initial_state: S [B, H, Dk, Dv].
    Returns o [B, T, H, Dv] and the final S or None.
    ``backend``: "auto" / "torch" / "triton" (``longctx.ops.common.backend``); the Triton kernels
    (K <= 256) always use chunks of 64, whatever ``chunk_size``.
    """
    op = "chunk_delta_rule"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    C = check_chunk_size(chunk_size)
    check_beta(op, "beta", beta, (B, T, H))
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
    if T == 0:  # nothing to chunk
        return recurrent_delta_rule(
            q, k, v, beta, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, use_qk_l2norm=use_qk_l2norm,
        )
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32
    qc, kc = prepare_qk(op, q, k, use_qk_l2norm, dtype)
    if wants_triton(op, backend, q, k, v, beta, initial_state, supported=kernel_unsupported(Dk, Dv)):
        from longctx.ops.deltanet.triton import triton_delta_rule

        return triton_delta_rule(
            qc.to(q.dtype), kc.to(q.dtype), v.to(q.dtype), beta, scale=default_scale(scale, Dk),
            initial_state=initial_state, output_final_state=output_final_state,
        )
    S0 = q.new_zeros(B, H, Dk, Dv, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    o, S = chunk_delta_core(
        qc * default_scale(scale, Dk), kc, v.to(dtype), beta.to(dtype), None, S0, C
    )
    return o.to(q.dtype).contiguous(), (S if output_final_state else None)

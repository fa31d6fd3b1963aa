"""Retention, chunkwise representation (RetNet, Sun et al. 2023, eq. 7).

Chunks of C tokens; q already scaled; b = log gamma per head. With G_i = (i+1) b the cumulative
log-decay at local position i of a chunk (i = 0..C-1):
    O_[n]   = (Q_[n] K_[n]^T ⊙ D) V_[n] + (Q_[n] S_n) ⊙ xi,   D_ij = gamma^(i-j) [i >= j]
    S_{n+1} = gamma^C S_n + K_[n]^T (V_[n] ⊙ zeta),       xi_i = gamma^(i+1), zeta_j = gamma^(C-1-j)
All decays are exp of a non-positive number. Padded tail tokens get b = 0 (no decay), so the
final state of a padded last chunk is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import kernel_unsupported, wants_triton
from longctx.ops.common.checks import (
    check_bidirectional,
    check_chunk_size,
    check_qkv,
    check_state,
    default_scale,
)
from longctx.ops.common.chunking import pad_to_multiple
from longctx.ops.retention.decay import resolve_log_decay
from longctx.ops.retention.recurrent import recurrent_retention


def chunk_retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    log_decay: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    causal: bool = True,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise retention.

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; log_decay: [H] (log gamma <= 0, default RetNet's);
    initial_state: S [B, H, Dk, Dv]. Returns o [B, T, H, Dv] and the final S or None.
    ``backend``: "auto" / "torch" / "triton" (``longctx.ops.common.backend``).
    ``causal=False``: the symmetric decay gamma^|n-m| (see ``naive_retention``), computed as a
    left-to-right pass plus a right-to-left pass minus the diagonal both of them count.
    """
    op = "chunk_retention"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    C = check_chunk_size(chunk_size)
    check_bidirectional(op, causal, initial_state, output_final_state)
    if not causal:
        kw = {"log_decay": log_decay, "scale": scale, "chunk_size": C}
        forward, _ = chunk_retention(q, k, v, **kw)
        backward, _ = chunk_retention(q.flip(1), k.flip(1), v.flip(1), **kw)
        s = default_scale(scale, Dk)
        diag = (q * k).sum(-1, keepdim=True) * s * v  # gamma^0 (q_n . k_n) v_n, counted twice
        return forward + backward.flip(1) - diag.to(forward.dtype), None
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32
    b = resolve_log_decay(op, log_decay, H, q, dtype)  # [H]
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
    if T == 0:  # nothing to chunk
        return recurrent_retention(
            q, k, v, log_decay=log_decay, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state,
        )
    scale = default_scale(scale, Dk)
    if wants_triton(op, backend, q, k, v, initial_state, supported=kernel_unsupported(Dk, Dv)):
        from longctx.ops.retention.triton import triton_retention

        return triton_retention(q, k, v, b, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state)

    qt = pad_to_multiple(q.to(dtype).transpose(1, 2) * scale, C, dim=2)[0]  # [B, H, Tp, Dk]
    kt = pad_to_multiple(k.to(dtype).transpose(1, 2), C, dim=2)[0]
    vt = pad_to_multiple(v.to(dtype).transpose(1, 2), C, dim=2)[0]  # [B, H, Tp, Dv]
    Tp = qt.shape[2]
    N = Tp // C
    qt, kt, vt = qt.view(B, H, N, C, Dk), kt.view(B, H, N, C, Dk), vt.view(B, H, N, C, Dv)

    real = torch.arange(Tp, device=q.device) < T  # padded tokens neither decay nor write
    b_t = torch.where(real, b[:, None], 0.0).view(H, N, C)  # per-token log-decay
    G = b_t.cumsum(-1)  # [H, N, C], G_i = sum_{t<=i} b_t within the chunk, <= 0, decreasing
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # eq. 7: D_ij = gamma^(i-j) for i >= j, as exp(G_i - G_j) masked before the exp
    D = torch.where(causal, G[..., :, None] - G[..., None, :], float("-inf")).exp()  # [H,N,C,C]
    o = ((qt @ kt.transpose(-1, -2)) * D) @ vt  # intra-chunk, [B, H, N, C, Dv]

    G_last = G[..., -1:]  # [H, N, 1], log gamma^C (of the real length in the last chunk)
    # eq. 7: K^T (V ⊙ zeta), zeta_j = gamma^(C-1-j) = exp(G_last - G_j)
    U = (kt * (G_last - G).exp()[..., None]).transpose(-1, -2) @ vt  # [B, H, N, Dk, Dv]
    chunk_decay = G_last.exp()[..., None]  # gamma^C, [H, N, 1, 1]
    S = q.new_zeros(B, H, Dk, Dv, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    starts = []
    for n in range(N):  # eq. 7: S_{n+1} = gamma^C S_n + K_[n]^T (V_[n] ⊙ zeta)
        starts.append(S)
        S = chunk_decay[:, n] * S + U[:, :, n]
    # eq. 7: (Q_[n] S_n) ⊙ xi, xi_i = gamma^(i+1) = exp(G_i)
    o = o + (qt * G.exp()[..., None]) @ torch.stack(starts, dim=2)
    o = o.reshape(B, H, Tp, Dv)[:, :, :T].transpose(1, 2).to(q.dtype).contiguous()
    return o, (S if output_final_state else None)

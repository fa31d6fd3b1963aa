"""Linear attention, chunkwise-parallel form (Katharopoulos et al. 2020; chunking as in
Hua et al. 2022 / Yang et al. 2024 §3).

Split T into chunks of C. Within chunk n the output is the masked quadratic form plus the
contribution of the state S_n at the chunk start:
    O_n = tril(Q_n K_n^T) V_n + Q_n S_n,        S_{n+1} = S_n + K_n^T V_n
(Q, K already through phi). Because the state update has no decay, every S_n is an exclusive
cumulative sum over chunks, so the whole op is a few batched einsums and one cumsum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import kernel_unsupported, wants_triton
from longctx.ops.common.checks import (
    check_bidirectional,
    check_chunk_size,
    check_qkv,
    default_scale,
)
from longctx.ops.common.chunking import pad_to_multiple
from longctx.ops.linear_attention.feature_maps import (
    apply_feature_map,
    check_feature_map,
    check_la_state,
    feature_dim,
    taylor_kernel,
)
from longctx.ops.linear_attention.recurrent import recurrent_linear_attention


def _exclusive_cumsum(x: Tensor, init: Tensor) -> tuple[Tensor, Tensor]:
    """Along dim 2 (chunks): ``(init + sum_{m<n} x_m for each n, init + sum_m x_m)``."""
    incl = torch.cumsum(x, dim=2)
    starts = torch.cat([torch.zeros_like(incl[:, :, :1]), incl[:, :, :-1]], dim=2)
    return starts + init.unsqueeze(2), incl[:, :, -1] + init


def chunk_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    feature_map: str = "elu+1",
    normalize: bool = False,
    scale: float | None = None,
    eps: float = 1e-6,
    initial_state: tuple[Tensor, Tensor] | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    causal: bool = True,
    backend: str | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Chunkwise causal linear attention; ``causal=False`` is the bidirectional form (no state).
    ``backend``: "auto" / "torch" / "triton" (``longctx.ops.common.backend``).

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; initial_state: (S [B, H, F, Dv], z [B, H, F]) with
    F = feature_dim(feature_map, Dk). Returns o [B, T, H, Dv] and the final (S, z) or None.
    """
    op = "chunk_linear_attention"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    C = check_chunk_size(chunk_size)
    check_feature_map(op, feature_map)
    check_bidirectional(op, causal, initial_state, output_final_state)
    if not causal:
        return _bidirectional(q, k, v, feature_map, normalize, default_scale(scale, Dk), eps), None
    Fd = feature_dim(feature_map, Dk)
    if initial_state is not None:
        check_la_state(op, "initial_state", initial_state, (B, H, Fd, Dv))
    if T == 0:  # nothing to chunk
        return recurrent_linear_attention(
            q, k, v, feature_map=feature_map, normalize=normalize, scale=scale, eps=eps,
            initial_state=initial_state, output_final_state=output_final_state,
        )
    scale = default_scale(scale, Dk)
    if wants_triton(op, backend, q, k, v, *(initial_state or ()), supported=kernel_unsupported(Fd, Dv)):
        from longctx.ops.linear_attention.triton import triton_linear_attention

        return triton_linear_attention(q, k, v, feature_map=feature_map, normalize=normalize, scale=scale,
                                       eps=eps, initial_state=initial_state,
                                       output_final_state=output_final_state)
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32

    qs = q.to(dtype).transpose(1, 2) * scale  # [B, H, T, Dk]
    kt = k.to(dtype).transpose(1, 2)  # [B, H, T, Dk]
    # phi before padding, so padded keys have phi = 0 and never reach the state
    qf = pad_to_multiple(apply_feature_map(qs, feature_map), C, dim=2)[0]  # [B, H, Tp, F]
    kf = pad_to_multiple(apply_feature_map(kt, feature_map), C, dim=2)[0]  # [B, H, Tp, F]
    vt = pad_to_multiple(v.to(dtype).transpose(1, 2), C, dim=2)[0]  # [B, H, Tp, Dv]
    N = qf.shape[2] // C
    qf, kf = qf.view(B, H, N, C, Fd), kf.view(B, H, N, C, Fd)
    vt = vt.view(B, H, N, C, Dv)

    # intra-chunk: the masked quadratic form (Katharopoulos et al. 2020, §3.3)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if feature_map == "taylor":
        # phi(q).phi(k) = 1 + x + x^2/2 from x = q.k: [C, C] from Dk, not F = 1 + Dk + Dk^2
        qd = pad_to_multiple(qs, C, dim=2)[0].view(B, H, N, C, Dk)
        kd = pad_to_multiple(kt, C, dim=2)[0].view(B, H, N, C, Dk)
        A = taylor_kernel(qd @ kd.transpose(-1, -2))  # [B, H, N, C, C]
    else:
        A = qf @ kf.transpose(-1, -2)  # [B, H, N, C, C]
    A = A.masked_fill(~causal, 0.0)

    # inter-chunk: S_n = S_0 + sum_{m<n} K_m^T V_m, z_n = z_0 + sum_{m<n} sum_j phi(k_j)
    if initial_state is None:
        S0 = q.new_zeros(B, H, Fd, Dv, dtype=dtype)
        z0 = q.new_zeros(B, H, Fd, dtype=dtype)
    else:
        S0, z0 = initial_state[0].to(dtype), initial_state[1].to(dtype)
    S_starts, S_final = _exclusive_cumsum(kf.transpose(-1, -2) @ vt, S0)  # [B, H, N, F, Dv]
    num = A @ vt + qf @ S_starts  # [B, H, N, C, Dv]
    z_final = None
    if normalize or output_final_state:
        z_starts, z_final = _exclusive_cumsum(kf.sum(3), z0)  # [B, H, N, F]
    if normalize:
        den = A.sum(-1) + (qf @ z_starts.unsqueeze(-1)).squeeze(-1)  # phi(q_i)^T z_i, [B,H,N,C]
        num = num / (den + eps).unsqueeze(-1)  # §3.3: o_i = phi(q_i)^T S_i / phi(q_i)^T z_i

    o = num.reshape(B, H, N * C, Dv)[:, :, :T].transpose(1, 2).to(q.dtype).contiguous()
    return o, ((S_final, z_final) if output_final_state else None)


def _bidirectional(q: Tensor, k: Tensor, v: Tensor, feature_map: str, normalize: bool,
                   scale: float, eps: float) -> Tensor:
    """Katharopoulos et al. 2020, eq. 5 without the causal mask: every query reads the whole
    sequence's ``S = sum_j phi(k_j) v_j^T`` (and ``z = sum_j phi(k_j)``). O(T F Dv), no T x T."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    qf = apply_feature_map(q.to(dtype).transpose(1, 2) * scale, feature_map)  # [B, H, T, F]
    kf = apply_feature_map(k.to(dtype).transpose(1, 2), feature_map)  # [B, H, T, F]
    vt = v.to(dtype).transpose(1, 2)  # [B, H, T, Dv]
    num = qf @ (kf.transpose(-1, -2) @ vt)  # [B, H, T, Dv]
    if normalize:
        den = qf @ kf.sum(2).unsqueeze(-1)  # phi(q_i)^T z, [B, H, T, 1]
        num = num / (den + eps)
    return num.transpose(1, 2).to(q.dtype).contiguous()

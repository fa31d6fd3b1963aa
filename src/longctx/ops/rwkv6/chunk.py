"""RWKV-6 WKV, the chunked training form: parallel inside chunks of C tokens, the state
``S [B, H, K, V]`` carried from chunk to chunk. Derivation in README.md.

Per chunk, with ``D(i, j) = sum_{j<m<i} log w_m`` (``<= 0``, per key dim) the log of the decay
a write at j has when token i reads the state:

    P_ij    = sum_d r_id k_jd exp(D_d(i, j))   (j < i),    P_ii = sum_d r_id u_d k_id
    O       = P V + (R ⊙ exp(D(i, -1))) S_n
    S_{n+1} = diag(exp(D(C, -1))) S_n + (K ⊙ exp(D(C, j)))^T V

Every exponent is ``<= 0`` and is a direct sum of log-decays, never a difference of two
cumulative sums (that loses float32 precision when strong decays come first in the chunk).
``P`` is built per sub-chunk of c tokens (c | C, c <= 8): the diagonal sub-blocks exactly (a
``[c, c, K]`` tensor of masked sums), the blocks below them split at the start of the query's
sub-chunk into an r-side and a k-side factor, each ``<= 1``.
(``longctx.ops.gla`` does not fit as is: GLA reads the state after the current token's write,
RWKV-6 reads it before, plus the bonus; reusing GLA would need ``exp(-log w_t)``, i.e. dividing
by decays as small as e^-400, or shifting k, v, w by one token plus an extra step for the final
state.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_chunk_size
from longctx.ops.common.chunking import pad_to_multiple
from longctx.ops.rwkv6.state import check_rwkv6, compute_dtype

MAX_SUB_CHUNK = 8  # the exact pairwise [c, c, K] tensor is only formed for c <= 8 (measured
# on CPU: 8 is ~1.3x faster than 16 at T = 4096, fwd and fwd+bwd)


def _sub_chunk_size(chunk_size: int) -> int:
    """Largest divisor of ``chunk_size`` that is <= MAX_SUB_CHUNK."""
    return max(c for c in range(1, min(chunk_size, MAX_SUB_CHUNK) + 1) if chunk_size % c == 0)


def _sum_before(x: Tensor, dim: int) -> Tensor:
    """``sum_{m < i} x_m`` along ``dim`` (exclusive prefix sum): a direct sum, no difference."""
    first = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([first, x.narrow(dim, 0, x.shape[dim] - 1)], dim).cumsum(dim)


def _sum_after(x: Tensor, dim: int) -> Tensor:
    """``sum_{m > i} x_m`` along ``dim`` (exclusive suffix sum)."""
    return _sum_before(x.flip(dim), dim).flip(dim)


def _intra_chunk_scores(r: Tensor, k: Tensor, u: Tensor, w: Tensor, c: int) -> Tensor:
    """P [B, H, N, C, C]: ``P_ij = sum_d r_id k_jd prod_{i>m>j} w_md`` for j < i, the bonus
    ``sum_d r_id u_d k_id`` on the diagonal, 0 above it.

    r, k, w (log-decay): ``[B, H, N, C, K]`` (r already scaled); u: ``[H, K]``; c: the
    sub-chunk size. Every exponent is a direct sum of log-decays (all ``<= 0``), never a
    difference of cumulative sums, so float32 keeps its relative precision however strong the
    decays before the pair are.
    """
    B, H, N, C, K = r.shape
    n = C // c
    rs, ks, ws = (x.view(B, H, N, n, c, K) for x in (r, k, w))
    dev = r.device

    # diagonal sub-blocks: expo_ij = sum_{j<m<i} log w_m, one masked [c*c, c] x [c, K] matmul
    i, j, m = (torch.arange(c, device=dev).view(s) for s in ((c, 1, 1), (1, c, 1), (1, 1, c)))
    between = ((j < m) & (m < i)).to(r.dtype).view(c * c, c)  # row (i, j) selects j < m < i
    expo = (between @ ws).view(B, H, N, n, c, c, K)  # [.., c(i), c(j), K], all <= 0
    decay = expo.exp() * (j < i).to(r.dtype)  # 0 on and above the diagonal (there expo = 0)
    P_diag = (rs.unsqueeze(-2) * ks.unsqueeze(-3) * decay).sum(-1)  # [B, H, N, n, c, c]
    bonus = (rs * u[:, None, None, None, :] * ks).sum(-1)  # [B, H, N, n, c] the current token
    P_diag = P_diag + torch.diag_embed(bonus)

    # blocks below the diagonal (query sub-chunk a, key sub-chunk b < a), split at the start of
    # a: prod_{i>m>j} w_m = [prod over a before i] * [prod over b after j] * [sub-chunks between]
    r_off = rs * _sum_before(ws, -2).exp()  # [B, H, N, n, c, K]
    total = ws.sum(-2)  # [B, H, N, n, K] log decay of each whole sub-chunk
    a_, b_, x_ = (torch.arange(n, device=dev).view(s) for s in ((n, 1, 1), (1, n, 1), (1, 1, n)))
    inside = ((b_ < x_) & (x_ < a_)).to(r.dtype)  # [n(a), n(b), n(x)]: sub-chunk x between b, a
    between = torch.einsum("abx,...xk->...abk", inside, total)  # [B, H, N, n(a), n(b), K]
    expo = _sum_after(ws, -2).unsqueeze(3) + between.unsqueeze(-2)  # [.., n(a), n(b), c(j), K]
    earlier = (b_ < a_).view(n, n, 1, 1)  # [n(a), n(b), 1, 1]
    k_off = ks.unsqueeze(3) * torch.where(earlier, expo, float("-inf")).exp()
    k_off = k_off.view(B, H, N, n, C, K)  # [B, H, N, n(a), C(j), K]
    P_off = r_off @ k_off.transpose(-1, -2)  # [B, H, N, n(a), c(i), C(j)]

    # P[a, i, b, j] = P_off[a, i, b, j] + [a == b] P_diag[a, i, j]
    eye = torch.eye(n, dtype=r.dtype, device=dev)[:, None, :, None]  # [n, 1, n, 1]
    P = P_off.view(B, H, N, n, c, n, c) + P_diag.unsqueeze(-2) * eye
    return P.view(B, H, N, C, C)


def chunk_rwkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    *,
    scale: float = 1.0,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Chunked RWKV-6: shapes and arguments as in ``naive_rwkv6``.

    r, k, w (log-decay ``<= 0``): ``[B, T, H, K]``; v: ``[B, T, H, V]``; u: ``[H, K]``;
    initial_state: ``S [B, H, K, V]``. Returns ``o [B, T, H, V]`` and the final S or None
    (float32 for half inputs). O(T C (K + V) + T K V) time per head, O(T (C/c + c) K + T C)
    extra memory.
    """
    B, T, H, K, V = check_rwkv6("chunk_rwkv6", r, k, v, w, u, initial_state)
    C = check_chunk_size(chunk_size)
    in_dtype, dtype = r.dtype, compute_dtype(r.dtype)
    S = r.new_zeros(B, H, K, V, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    if T == 0:
        return r.new_zeros(B, 0, H, V), (S if output_final_state else None)

    def chunked(x: Tensor) -> Tensor:  # [B, T, H, D] -> [B, H, N, C, D], zero-padded
        x = pad_to_multiple(x.to(dtype).transpose(1, 2), C, dim=2)[0]
        return x.view(B, H, -1, C, x.shape[-1])

    # padded tokens: log w = 0 (no decay), k = v = 0 (no write), so the final state is exact
    rc, kc, vc, wc = chunked(r), chunked(k), chunked(v), chunked(w)
    rc = rc * scale
    N = rc.shape[2]
    o = _intra_chunk_scores(rc, kc, u.to(dtype), wc, _sub_chunk_size(C)) @ vc  # [B, H, N, C, V]

    E = _sum_before(wc, 3)  # [B, H, N, C, K] log prod_{m<i} w_m: the decay of S_n when i reads it
    after = _sum_after(wc, 3)  # log prod_{m>j} w_m: the decay of token j's write by the chunk end
    U = (kc * after.exp()).transpose(-1, -2) @ vc  # [B, H, N, K, V] the chunk's writes
    chunk_decay = wc.sum(3).exp().unsqueeze(-1)  # [B, H, N, K, 1]
    starts = []
    for i in range(N):  # the state before each chunk
        starts.append(S)
        S = chunk_decay[:, :, i] * S + U[:, :, i]
    o = o + (rc * E.exp()) @ torch.stack(starts, dim=2)  # inter-chunk: r_i diag(exp(E_i)) S_n
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2).to(in_dtype)  # [B, T, H, V]
    return o, (S if output_final_state else None)

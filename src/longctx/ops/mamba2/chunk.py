"""SSD (Mamba-2), the chunked "state space dual" algorithm (Dao & Gu 2024, §6, Fig. 5, Listing 1).

The sequence transformation is y = M x with the 1-semiseparable matrix
``M_ij = C_i^T B_j exp(a_{j+1} + ... + a_i) dt_j``, a_t = dt_t A (eq. (3) for the scalar SSM).
Split into chunks of L tokens, with the segment sums ``seg_ij = a_{j+1} + ... + a_i`` (i >= j,
<= 0) and the chunk-local cumulative sums ``Acs_i = a_0 + ... + a_i`` (<= 0):
    1. diagonal blocks:  Y_diag = (Lmask ∘ C B^T) U,  Lmask_ij = exp(seg_ij) (i >= j),  U = dt x
    2. chunk states:     S^c_n = sum_j exp(seg_{L-1, j}) U_j B_j^T
    3. state passing:    S_{n+1} = exp(Acs_{L-1}) S_n + S^c_n          (a loop over chunks)
    4. output of states: Y_off_i = exp(Acs_i) S_n C_i
Every exp has a non-positive argument (masked to -inf before the exp above the diagonal). The
segment sums are summed directly (masked cumulative sums, the paper's ``segsum``), not taken as
differences ``Acs_i - Acs_j``: in float32 that keeps dA ~100x more accurate (README.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import kernel_unsupported, wants_triton
from longctx.ops.common.checks import check_chunk_size, check_state
from longctx.ops.common.chunking import pad_to_multiple
from longctx.ops.mamba2.common import check_ssd_inputs, compute_dtype
from longctx.ops.mamba2.recurrent import recurrent_ssd


def _chunked(t: Tensor, L: int) -> Tensor:
    """``[B, T, heads, *rest] -> [B, heads, n_chunks, L, *rest]``, zero-padded at the end."""
    t = pad_to_multiple(t.transpose(1, 2), L, dim=2)[0]
    return t.reshape(t.shape[0], t.shape[1], -1, L, *t.shape[3:])


def _segsum(a: Tensor) -> Tensor:
    """``seg_ij = a_{j+1} + ... + a_i`` for i >= j, ``-inf`` for i < j: ``[..., L] -> [..., L, L]``.

    Summed directly (a cumulative sum over i of a_k masked to j < k), so no cancellation; the
    mask is applied before any exp, so masked entries have exactly zero gradient.
    """
    L = a.shape[-1]
    idx = torch.arange(L, device=a.device)
    after_j = idx[:, None] > idx[None, :]  # [L(k), L(j)]: k > j
    seg = torch.where(after_j, a.unsqueeze(-1), 0.0).cumsum(dim=-2)  # sum_{j<k<=i} a_k
    return seg.masked_fill(idx[:, None] < idx[None, :], float("-inf"))


def chunk_ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Chunked SSD; ``backend`` "auto" / "torch" / "triton" (``longctx.ops.common.backend``).

    x: [B, T, H, P]; dt: [B, T, H] (>= 0); A: [H] (<= 0); B, C: [B, T, G, N] with G | H;
    D: [H] or None; initial_state: [B, H, P, N]. Returns y [B, T, H, P] and the final state or
    None. Memory O(B H T L) for the intra-chunk scores.
    """
    op = "chunk_ssd"
    Bsz, T, H, P, G, N = check_ssd_inputs(op, x, dt, A, B, C, D)
    L = check_chunk_size(chunk_size)
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (Bsz, H, P, N))
    if T == 0:  # nothing to chunk
        return recurrent_ssd(x, dt, A, B, C, D=D, initial_state=initial_state,
                             output_final_state=output_final_state)
    if wants_triton(op, backend, x, dt, A, B, C, D, initial_state, supported=kernel_unsupported(N, P)):
        from longctx.ops.mamba2.triton import triton_ssd

        return triton_ssd(x, dt, A, B, C, D=D, initial_state=initial_state,
                          output_final_state=output_final_state)
    dtype = compute_dtype(x)
    R = H // G  # heads per group: head h = g * R + r reads group g
    xc, dtc = x.to(dtype), dt.to(dtype)

    # padded tokens have dt = 0: no decay (a = 0) and no write (U = 0), so the final state is exact
    a = _chunked(dtc * A.to(dtype), L)  # a_t = dt_t A_h, [B, H, Nc, L]
    Acs = a.cumsum(dim=-1)  # chunk-local cumulative log-decay, <= 0 and non-increasing
    U = _chunked(dtc[..., None] * xc, L)  # dt_t x_t, [B, H, Nc, L, P]
    Nc = U.shape[2]
    Bg = _chunked(B.to(dtype), L).unsqueeze(2)  # [B, G, 1, Nc, L, N]
    Cg = _chunked(C.to(dtype), L).unsqueeze(2)
    Acs_g = Acs.reshape(Bsz, G, R, Nc, L)  # [B, G, R, Nc, L]
    U_g = U.reshape(Bsz, G, R, Nc, L, P)

    # 1. diagonal blocks: Lmask = exp(segsum(a)), 1-semiseparable (§6, Listing 1)
    seg = _segsum(a).reshape(Bsz, G, R, Nc, L, L)  # [B, G, R, Nc, L(i), L(j)], -inf for j > i
    decay = seg.exp()
    scores = (Cg @ Bg.transpose(-1, -2)) * decay  # (L ∘ C B^T), C B^T shared by a group's heads
    y = scores @ U_g  # [B, G, R, Nc, L, P]

    # 2. chunk states (from a zero start): sum_j exp(seg_{L-1, j}) U_j B_j^T
    to_end = seg[..., -1, :].exp().unsqueeze(-1)  # exp(a_{j+1} + ... + a_{L-1}), [.., L, 1]
    chunk_states = ((U_g * to_end).transpose(-1, -2) @ Bg).reshape(Bsz, H, Nc, P, N)

    # 3. state passing between chunks: S_{n+1} = exp(Acs_last) S_n + S^c_n
    chunk_decay = Acs[..., -1].exp()[..., None, None]  # [B, H, Nc, 1, 1]
    S = xc.new_zeros(Bsz, H, P, N) if initial_state is None else initial_state.to(dtype)
    starts = []
    for n in range(Nc):
        starts.append(S)
        S = chunk_decay[:, :, n] * S + chunk_states[:, :, n]
    starts_g = torch.stack(starts, dim=2).reshape(Bsz, G, R, Nc, P, N)

    # 4. output of the chunk-start states: exp(Acs_i) S_n C_i
    y = y + (Cg @ starts_g.transpose(-1, -2)) * Acs_g.exp().unsqueeze(-1)
    y = y.reshape(Bsz, H, Nc * L, P)[:, :, :T].transpose(1, 2)  # [B, T, H, P]
    if D is not None:
        y = y + D.to(dtype)[:, None] * xc  # skip connection D x_t
    return y.to(x.dtype).contiguous(), (S if output_final_state else None)

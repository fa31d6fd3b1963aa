"""The parallel scan of a first-order linear recurrence ``h_i = exp(a_i) h_{i-1} + b_i``.

Recursive doubling (Hillis & Steele 1986) over the associative operator
``(a, b) o (a', b') = (a + a', b + exp(a) b')`` (S5, Smith et al. 2023, §2.2 / Blelloch 1990):
log-depth steps inside chunks, then one more scan over the chunks' (total decay, end state)
pairs. ``a`` is a log-decay (real for Mamba, complex ``log A_bar`` for S5); every exponential
is of a sum of a's, so ``Re a <= 0`` keeps them bounded. Works with autograd (real or complex).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.chunking import pad_to_multiple


def doubling_scan(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of h_i = exp(a_i) h_{i-1} + b_i from h_{-1} = 0 along dim 1 (Re a <= 0).

    a, b: [M, L, ...]. Returns (a_cum, h), a_cum_i = a_0 + ... + a_i; ceil(log2 L) steps.
    """
    L, s = a.shape[1], 1
    while s < L:
        # position i covers the s steps (i - s, i]; compose with position i - s, covering the s before
        b = torch.cat([b[:, :s], b[:, s:] + a[:, s:].exp() * b[:, :-s]], dim=1)
        a = torch.cat([a[:, :s], a[:, s:] + a[:, :-s]], dim=1)
        s *= 2
    return a, b


def chunked_scan(a: Tensor, b: Tensor, h0: Tensor, chunk_size: int) -> Tensor:
    """Every state of h_i = exp(a_i) h_{i-1} + b_i with h_{-1} = h0, along dim 1 (Re a <= 0).

    a, b: [M, L, *S]; h0: [M, *S]. Returns h: [M, L, *S]. Never writes to a, b or h0.
    """
    M, L, S, C = a.shape[0], a.shape[1], a.shape[2:], chunk_size
    a = pad_to_multiple(a, C, dim=1)[0]  # padded steps: a = 0, b = 0, the identity
    b = pad_to_multiple(b, C, dim=1)[0]
    n = a.shape[1] // C
    a_cum, h_loc = doubling_scan(a.reshape(M * n, C, *S), b.reshape(M * n, C, *S))
    a_cum, h_loc = a_cum.view(M, n, C, *S), h_loc.view(M, n, C, *S)  # chunk-local, from 0
    ends_loc = h_loc[:, :, -1].clone()  # [M, n, *S] each chunk's end state from a zero start
    ends_loc[:, 0] += a_cum[:, 0, -1].exp() * h0
    ends = doubling_scan(a_cum[:, :, -1], ends_loc)[1]  # true end states, scan over chunks
    starts = torch.cat([h0.unsqueeze(1), ends[:, :-1]], dim=1)  # [M, n, *S]
    h = h_loc + a_cum.exp() * starts.unsqueeze(2)  # h_i = h_loc_i + exp(a_cum_i) start
    return h.view(M, n * C, *S)[:, :L]

"""ALiBi head slopes (Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases
Enables Input Length Extrapolation", arXiv:2108.12409).

ALiBi adds no position embedding: each head h adds ``-m_h * (i - j)`` to the score of query
position i and key position j (``-m_h * |i - j|`` in the bidirectional form). The bias itself is
built inside the attention ops (``alibi_slopes=`` of ``longctx.ops.softmax_attention`` and
``longctx.ops.sliding_window_attention``); this module only provides the fixed slopes ``m``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longctx.ops.common import check_positive_int


def _power_of_two_slopes(n: int) -> list[float]:
    """Press et al. 2022: for n heads the geometric sequence starting at 2^(-8/n), ratio 2^(-8/n)."""
    return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]  # start^(h+1), start = 2^(-8/n)


def alibi_slopes(n_heads: int, dtype: torch.dtype | None = None) -> Tensor:
    """The ALiBi slope of each head, ``[n_heads]`` (``dtype`` defaults to torch's default dtype).

    For ``n_heads`` a power of two: ``2^(-8/n), 2^(-16/n), ..., 2^(-8)`` (8 heads: 1/2 .. 1/256).
    Otherwise (the rule of the paper's reference implementation): the slopes of the closest
    smaller power of two ``p = 2^floor(log2 n)``, followed by the first ``n - p`` of every other
    slope of ``2p`` heads (``2p``'s slopes at even indices 0, 2, 4, ...), which interleave between
    ``p``'s slopes.
    """
    n = check_positive_int("n_heads", n_heads)
    p = 2 ** math.floor(math.log2(n))
    slopes = _power_of_two_slopes(p)
    if p < n:
        slopes += _power_of_two_slopes(2 * p)[0::2][: n - p]
    return torch.tensor(slopes, dtype=torch.float64).to(dtype or torch.get_default_dtype())


__all__ = ["alibi_slopes"]

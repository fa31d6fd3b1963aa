"""ALiBi bias and the ``causal`` argument, shared by softmax and sliding-window attention.

ALiBi (Press et al. 2022, "Train Short, Test Long", arXiv:2108.12409) adds
``-m_h * (i - j)`` to the score of query position i and key position j (head h, slope ``m_h``);
the bidirectional form adds ``-m_h * |i - j|``. Under a causal mask only ``j <= i`` is kept, where
``|i - j| = i - j``, so every form here uses ``-m_h * |i - j|`` for both.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_alibi_slopes(op: str, slopes: object, H: int, like: Tensor) -> Tensor | None:
    """Validate ``alibi_slopes [H]`` (one slope per query head, floating point) or ``None``."""
    if slopes is None:
        return None
    if not isinstance(slopes, Tensor):
        raise TypeError(
            f"{op}: alibi_slopes must be a torch.Tensor [H={H}] (one slope per query head) or "
            f"None, got {type(slopes).__name__}"
        )
    if not slopes.is_floating_point():
        raise ValueError(
            f"{op}: alibi_slopes must be a floating-point tensor (e.g. "
            f"longctx.position.alibi_slopes(H)), got dtype {slopes.dtype}"
        )
    if tuple(slopes.shape) != (H,):
        raise ValueError(
            f"{op}: alibi_slopes must have shape [H={H}] (one slope per query head, also with "
            f"GQA), got {list(slopes.shape)}"
        )
    if slopes.device != like.device:
        raise ValueError(f"{op}: alibi_slopes must be on q's device {like.device}, got {slopes.device}")
    return slopes


def alibi_bias(slopes: Tensor, distance: Tensor, dtype: torch.dtype) -> Tensor:
    """``-slopes[h] * |distance|``: ``slopes [H]``, ``distance [...]`` (query minus key position)
    -> ``[H, ...]`` in ``dtype``."""
    m = slopes.to(dtype).reshape(-1, *([1] * distance.dim()))
    return -m * distance.abs().to(dtype)


__all__ = ["alibi_bias", "check_alibi_slopes"]

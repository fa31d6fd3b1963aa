"""Helpers for chunked forms."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(x: Tensor, multiple: int, dim: int = 1, value: float = 0.0) -> tuple[Tensor, int]:
    """Right-pad ``x`` along ``dim`` to a multiple of ``multiple``; return ``(padded, pad)``."""
    n = x.shape[dim]
    pad = (-n) % multiple
    if pad == 0:
        return x, 0
    spec = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, pad]
    return F.pad(x, spec, value=value), pad

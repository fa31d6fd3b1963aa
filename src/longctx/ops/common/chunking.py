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


def gqa_to_rows(x: Tensor, Hk: int, group: int) -> Tensor:
    """``[B, T, H, D] -> [B, Hk, T*G, D]`` with ``H = Hk * G``: the G query heads that share a
    key/value head become extra rows (row ``t*G + g``), so GQA attention is one matmul per kv head."""
    B, T, _, D = x.shape
    return x.reshape(B, T, Hk, group, D).permute(0, 2, 1, 3, 4).reshape(B, Hk, T * group, D)


def gqa_from_rows(x: Tensor, T: int, group: int) -> Tensor:
    """The inverse of ``gqa_to_rows``: ``[B, Hk, T*G, Dv] -> [B, T, H, Dv]``."""
    B, Hk, _, Dv = x.shape
    return x.reshape(B, Hk, T, group, Dv).permute(0, 2, 1, 3, 4).reshape(B, T, Hk * group, Dv)

"""RetNet's fixed per-head decays and the ``log_decay`` check shared by the three forms."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_gate


def retnet_log_decay(
    num_heads: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """``log gamma_h`` for ``h = 0..num_heads-1``, ``gamma_h = 1 - 2^(-5-h)``: shape [H]."""
    h = torch.arange(num_heads, dtype=torch.float64)
    # Sun et al. 2023 (RetNet), §2.2: gamma = 1 - 2^(-5 - arange(0, h)); log1p keeps it exact
    return torch.log1p(-torch.pow(2.0, -5.0 - h)).to(dtype=dtype, device=device)


def resolve_log_decay(op: str, log_decay: Tensor | None, H: int, like: Tensor, dtype) -> Tensor:
    """The validated ``log_decay [H]`` (<= 0) in ``dtype``, or the RetNet default."""
    if log_decay is None:
        return retnet_log_decay(H, dtype=dtype, device=like.device)
    check_gate(op, "log_decay", log_decay, (H,), log_space=True)
    return log_decay.to(dtype=dtype, device=like.device)


__all__ = ["resolve_log_decay", "retnet_log_decay"]

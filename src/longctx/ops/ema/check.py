"""Argument checks of the EMA op."""

from __future__ import annotations

from torch import Tensor

from longctx.ops.common.checks import check_values


def check_ema(op: str, x: Tensor, alpha: Tensor, delta: Tensor, beta: Tensor, eta: Tensor) -> tuple[int, int, int, int]:
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"{op}: x must be [B, T, D], got {list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    B, T, D = x.shape
    if not isinstance(alpha, Tensor) or alpha.dim() != 2 or alpha.shape[0] != D:
        raise ValueError(f"{op}: alpha must be [D={D}, h], got {list(alpha.shape) if isinstance(alpha, Tensor) else alpha!r}")
    for name, p in (("delta", delta), ("beta", beta), ("eta", eta)):
        if not isinstance(p, Tensor) or p.shape != alpha.shape:
            raise ValueError(f"{op}: {name} must be [D={D}, h={alpha.shape[1]}] like alpha")
    for name, p in (("alpha", alpha), ("delta", delta)):
        if check_values() and not bool(((p > 0) & (p < 1)).all()):
            raise ValueError(f"{op}: {name} must lie in (0, 1) (MEGA takes sigmoids), "
                             f"got values in [{float(p.min()):.3g}, {float(p.max()):.3g}]")
    return B, T, D, alpha.shape[1]

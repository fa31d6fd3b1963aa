"""One EMA step: ``h = alpha beta x_t + (1 - alpha delta) h``, ``y_t = sum_j eta_j h_j``."""

from __future__ import annotations

from torch import Tensor

from longctx.ops.ema.check import check_ema


def ema_step(x_t: Tensor, state: Tensor | None, alpha: Tensor, delta: Tensor, beta: Tensor,
             eta: Tensor) -> tuple[Tensor, Tensor]:
    """``x_t [B, D]``, ``state [B, D, h]`` (None = zeros) -> ``(y_t [B, D], state)``."""
    B, _, D, h = check_ema("ema_step", x_t[:, None], alpha, delta, beta, eta)
    if state is None:
        state = x_t.new_zeros(B, D, h)
    state = alpha * beta * x_t[..., None] + (1 - alpha * delta) * state
    return (eta * state).sum(-1), state

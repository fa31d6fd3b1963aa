"""MEGA's multi-dimensional damped EMA written plainly (Ma et al. 2023, "Mega", §3.1, eq. 2-3):

    u_t^(j) = beta_j x_t                                  (each channel expanded to h dims)
    h_t^(j) = alpha_j u_t^(j) + (1 - alpha_j delta_j) h_{t-1}^(j)
    y_t     = sum_j eta_j h_t^(j)

per channel: ``x [B, T, D]``; ``alpha, delta [D, h]`` in (0, 1); ``beta, eta [D, h]``; state
``h [B, D, h]``. ``causal=False`` adds the same EMA run from the end with ``eta_backward`` (over
``x_{t+1} ..``), the bidirectional EMA of MEGA's encoders with shared decays.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.ema.check import check_ema


def naive_ema(x: Tensor, alpha: Tensor, delta: Tensor, beta: Tensor, eta: Tensor,
              initial_state: Tensor | None = None, output_final_state: bool = False,
              causal: bool = True, eta_backward: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    B, T, D, h = check_ema("naive_ema", x, alpha, delta, beta, eta)
    q = 1 - alpha * delta  # the damped decay
    s = initial_state if initial_state is not None else x.new_zeros(B, D, h)
    ys = []
    for t in range(T):
        s = alpha * beta * x[:, t, :, None] + q * s
        ys.append((eta * s).sum(-1))
    y = torch.stack(ys, 1) if ys else x.new_zeros(x.shape)
    if not causal:
        z, back = x.new_zeros(B, D, h), []
        for t in range(T - 1, -1, -1):
            back.append((eta_backward * z).sum(-1))  # the tokens after t
            z = alpha * beta * x[:, t, :, None] + q * z
        y = y + torch.stack(back[::-1], 1)
    return y, (s if output_final_state else None)

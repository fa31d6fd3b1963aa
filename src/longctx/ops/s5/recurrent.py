"""S5 decode: one step ``x = Lambda_bar x + B_bar u_t``, ``y_t = 2 Re(C x) + D u_t``."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.s5.ssm import check_s5, discretize, readout


def s5_step(u_t: Tensor, state: Tensor | None, Lambda: Tensor, B: Tensor, C: Tensor, dt: Tensor,
            D: Tensor | None = None, method: str = "zoh") -> tuple[Tensor, Tensor]:
    """``u_t [B, H]``, ``state [B, P]`` complex (None = zeros) -> ``(y_t [B, H], state)``."""
    b, _, _, P = check_s5("s5_step", u_t[:, None], Lambda, B, C, dt, D, method)
    if state is None:
        state = torch.zeros(b, P, dtype=Lambda.dtype, device=u_t.device)
    elif state.shape != (b, P) or not state.is_complex():
        raise ValueError(f"s5_step: state must be complex [B={b}, P={P}], got {state.dtype} {list(state.shape)}")
    log_L, B_bar = discretize(Lambda, B, dt, method)
    state = torch.exp(log_L) * state + u_t.to(B_bar.dtype) @ B_bar.transpose(0, 1)
    y = readout(state, C).to(u_t.dtype)
    return (y if D is None else y + u_t * D), state

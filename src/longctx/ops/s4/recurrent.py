"""S4D decode: one step of ``x_k = A_bar x_{k-1} + B_bar u_k``, ``y_k = 2 Re(C x_k) + D u_k``."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.s4.ssm import check_ssm, discretize


def s4d_step(u_t: Tensor, state: Tensor | None, A: Tensor, B: Tensor, C: Tensor, dt: Tensor,
             D: Tensor | None = None, method: str = "zoh") -> tuple[Tensor, Tensor]:
    """``u_t [B, H]``, ``state [B, H, N]`` complex (None = zeros) -> ``(y_t [B, H], state)``."""
    b, _, H, N = check_ssm("s4d_step", u_t[:, None], A, B, C, dt, D, method)
    if state is None:
        state = torch.zeros(b, H, N, dtype=A.dtype, device=u_t.device)
    elif state.shape != (b, H, N) or not state.is_complex():
        raise ValueError(f"s4d_step: state must be complex [B={b}, H={H}, N={N}], got "
                         f"{state.dtype} {list(state.shape)}")
    log_A_bar, B_bar = discretize(A, B, dt, method)
    state = torch.exp(log_A_bar) * state + B_bar * u_t[..., None]
    y = 2 * (C * state).sum(-1).real.to(u_t.dtype)
    return (y if D is None else y + u_t * D), state

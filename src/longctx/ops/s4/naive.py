"""The S4D recurrence written plainly (the reference): ``x_k = A_bar x_{k-1} + B_bar u_k``,
``y_k = 2 Re(C x_k) + D u_k`` (S4D eq. 2 with the discretisation of ``ssm.discretize``), and the
kernel by explicit powers of ``A_bar``."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.s4.ssm import check_ssm, discretize


def naive_kernel(A: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int, method: str = "zoh") -> Tensor:
    """``K[h, l] = 2 Re(C A_bar^l B_bar)`` by repeated multiplication (O(N L))."""
    log_A_bar, B_bar = discretize(A, B, dt, method)
    A_bar, power, out = torch.exp(log_A_bar), torch.ones_like(B_bar), []
    for _ in range(L):
        out.append(2 * (C * power * B_bar).sum(-1).real)
        power = power * A_bar
    return torch.stack(out, dim=-1) if out else A.real.new_zeros(A.shape[0], 0)


def naive_s4d(u: Tensor, A: Tensor, B: Tensor, C: Tensor, dt: Tensor, D: Tensor | None = None,
              method: str = "zoh", initial_state: Tensor | None = None,
              output_final_state: bool = False, causal: bool = True,
              C_backward: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``u [B, T, H]`` -> ``y [B, T, H]`` by the token loop. ``causal=False`` adds the backward
    SSM with ``C_backward`` run right to left over ``u[t+1:]``."""
    b, T, H, N = check_ssm("naive_s4d", u, A, B, C, dt, D, method)
    log_A_bar, B_bar = discretize(A, B, dt, method)
    A_bar = torch.exp(log_A_bar)
    x = initial_state if initial_state is not None else torch.zeros(b, H, N, dtype=A.dtype, device=u.device)
    ys = []
    for t in range(T):
        x = A_bar * x + B_bar * u[:, t, :, None]
        ys.append(2 * (C * x).sum(-1).real)
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(u.shape)
    if not causal:
        z, back = torch.zeros(b, H, N, dtype=A.dtype, device=u.device), []
        for t in range(T - 1, -1, -1):
            back.append(2 * (C_backward * z).sum(-1).real)  # the tokens after t
            z = A_bar * z + B_bar * u[:, t, :, None]
        y = y + torch.stack(back[::-1], dim=1)
    if D is not None:
        y = y + u * D
    return y.to(u.dtype), (x if output_final_state else None)

"""S5 written plainly: the recurrence as a loop over tokens (the reference)."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.s5.ssm import check_s5, discretize, readout


def naive_s5(u: Tensor, Lambda: Tensor, B: Tensor, C: Tensor, dt: Tensor, D: Tensor | None = None,
             method: str = "zoh", initial_state: Tensor | None = None, output_final_state: bool = False,
             causal: bool = True, C_backward: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``u [B, T, H]`` -> ``y [B, T, H]``; ``causal=False`` adds ``2 Re(C_backward z_t)`` with
    ``z`` the same SSM run from the end (``z_t`` sees ``u_t .. u_{T-1}``)."""
    b, T, _, P = check_s5("naive_s5", u, Lambda, B, C, dt, D, method)
    log_L, B_bar = discretize(Lambda, B, dt, method)
    L_bar = torch.exp(log_L)
    x = initial_state if initial_state is not None else torch.zeros(b, P, dtype=Lambda.dtype, device=u.device)
    ys = []
    for t in range(T):
        x = L_bar * x + u[:, t].to(B_bar.dtype) @ B_bar.transpose(0, 1)
        ys.append(readout(x, C))
    y = torch.stack(ys, 1) if ys else u.new_zeros(u.shape)
    if not causal:
        z, back = torch.zeros(b, P, dtype=Lambda.dtype, device=u.device), []
        for t in range(T - 1, -1, -1):
            z = L_bar * z + u[:, t].to(B_bar.dtype) @ B_bar.transpose(0, 1)
            back.append(readout(z, C_backward))
        y = y + torch.stack(back[::-1], 1)
    if D is not None:
        y = y + u * D
    return y.to(u.dtype), (x if output_final_state else None)

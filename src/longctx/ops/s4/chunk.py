"""S4D's parallel (training) form: the kernel by Vandermonde product, the output by FFT
convolution, O(T log T) (S4D §3; S4 §3.3). An initial state adds its free response
``2 Re(C A_bar^(t+1) x0)``; the final state is the recurrence summed in closed form."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_bidirectional
from longctx.ops.s4.ssm import (
    anticausal_fft_conv,
    check_ssm,
    discretize,
    fft_conv,
    state_after,
    vandermonde_kernel,
)


def chunk_s4d(u: Tensor, A: Tensor, B: Tensor, C: Tensor, dt: Tensor, D: Tensor | None = None,
              method: str = "zoh", initial_state: Tensor | None = None,
              output_final_state: bool = False, causal: bool = True,
              C_backward: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``u [B, T, H]`` -> ``(y [B, T, H], final state [B, H, N] complex or None)``.

    ``causal=False`` (bidirectional, S4's LRA models): ``y += sum_{s>t} K_b[s-t-1] u_s`` with
    the kernel of ``C_backward``; no state.
    """
    b, T, H, N = check_ssm("chunk_s4d", u, A, B, C, dt, D, method)
    check_bidirectional("chunk_s4d", causal, initial_state, output_final_state)
    if not causal and (C_backward is None or C_backward.shape != C.shape):
        raise ValueError("chunk_s4d: causal=False needs C_backward with the shape of C [H, N]")
    if initial_state is not None and initial_state.shape != (b, H, N):
        raise ValueError(f"chunk_s4d: initial_state must be [B={b}, H={H}, N={N}] complex, got "
                         f"{list(initial_state.shape)}")
    if T == 0:
        empty = initial_state if initial_state is not None else torch.zeros(b, H, N, dtype=A.dtype, device=u.device)
        return u.clone(), (empty if output_final_state else None)
    log_A_bar, B_bar = discretize(A, B, dt, method)
    work = torch.promote_types(u.dtype, torch.float32)
    y = fft_conv(u.to(work), vandermonde_kernel(log_A_bar, C * B_bar, T).to(work))
    if not causal:
        y = y + anticausal_fft_conv(u.to(work), vandermonde_kernel(log_A_bar, C_backward * B_bar, T).to(work))
    if initial_state is not None:  # x_t gains A_bar^(t+1) x0: a kernel per batch row
        free = vandermonde_kernel(log_A_bar, C * torch.exp(log_A_bar) * initial_state, T)  # [B, H, T]
        y = y + free.transpose(1, 2).to(work)
    if D is not None:
        y = y + u * D
    final = state_after(u, log_A_bar, B_bar, initial_state) if output_final_state else None
    return y.to(u.dtype), final

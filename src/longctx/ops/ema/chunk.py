"""The EMA's convolution form (MEGA §3.1: the EMA is a convolution with kernel
``K[l] = sum_j eta_j alpha_j beta_j (1 - alpha_j delta_j)^l``), by the blocked Vandermonde
product and FFT convolution of ``ops/s4`` (a real diagonal SSM: ``A_bar = 1 - alpha delta``,
``B_bar = alpha beta``, ``C = eta``). O(T log T); an initial state adds its free response, the
final state is the recurrence in closed form."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_bidirectional
from longctx.ops.ema.check import check_ema
from longctx.ops.s4.ssm import anticausal_fft_conv, fft_conv, state_after, vandermonde_kernel


def chunk_ema(x: Tensor, alpha: Tensor, delta: Tensor, beta: Tensor, eta: Tensor,
              initial_state: Tensor | None = None, output_final_state: bool = False,
              causal: bool = True, eta_backward: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``x [B, T, D]`` -> ``(y [B, T, D], state [B, D, h] or None)``."""
    B, T, D, h = check_ema("chunk_ema", x, alpha, delta, beta, eta)
    check_bidirectional("chunk_ema", causal, initial_state, output_final_state)
    if not causal and (eta_backward is None or eta_backward.shape != eta.shape):
        raise ValueError(f"chunk_ema: causal=False needs eta_backward [D={D}, h={h}]")
    if initial_state is not None and initial_state.shape != (B, D, h):
        raise ValueError(f"chunk_ema: initial_state must be [B={B}, D={D}, h={h}], got {list(initial_state.shape)}")
    if T == 0:
        return x.clone(), (initial_state if initial_state is not None else x.new_zeros(B, D, h)) \
            if output_final_state else None
    log_q, b = torch.log1p(-alpha * delta), alpha * beta  # log A_bar, B_bar
    y = fft_conv(x, vandermonde_kernel(log_q, eta * b, T, conjugate_pairs=False))
    if not causal:
        y = y + anticausal_fft_conv(x, vandermonde_kernel(log_q, eta_backward * b, T, conjugate_pairs=False))
    if initial_state is not None:  # h_t gains q^(t+1) h0
        free = vandermonde_kernel(log_q, eta * torch.exp(log_q) * initial_state, T, conjugate_pairs=False)
        y = y + free.transpose(1, 2)
    final = state_after(x, log_q, b, initial_state) if output_final_state else None
    return y, final

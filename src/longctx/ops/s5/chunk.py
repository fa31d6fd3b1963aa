"""S5's parallel form: ``B_bar u_k`` for every k at once, then the parallel associative scan
(``ops/common/scan.py``: recursive doubling within chunks and across them) for all states, then
the readout. O(T P (H + log chunk)) work, no loop over tokens (S5 §2.2, "parallel scans")."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_bidirectional, check_chunk_size
from longctx.ops.common.scan import chunked_scan
from longctx.ops.s5.ssm import check_s5, discretize, readout


def _states(u: Tensor, log_L: Tensor, B_bar: Tensor, x0: Tensor, chunk_size: int) -> Tensor:
    Bu = u.to(B_bar.dtype) @ B_bar.transpose(0, 1)  # [B, T, P]
    a = log_L.expand_as(Bu)
    return chunked_scan(a, Bu, x0, chunk_size)  # [B, T, P]


def chunk_s5(u: Tensor, Lambda: Tensor, B: Tensor, C: Tensor, dt: Tensor, D: Tensor | None = None,
             method: str = "zoh", initial_state: Tensor | None = None, output_final_state: bool = False,
             causal: bool = True, C_backward: Tensor | None = None,
             chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """``u [B, T, H]`` -> ``(y [B, T, H], final state [B, P] complex or None)``."""
    b, T, H, P = check_s5("chunk_s5", u, Lambda, B, C, dt, D, method)
    check_bidirectional("chunk_s5", causal, initial_state, output_final_state)
    check_chunk_size(chunk_size)
    if not causal and (C_backward is None or C_backward.shape != C.shape):
        raise ValueError(f"chunk_s5: causal=False needs C_backward [H={H}, P={P}]")
    if initial_state is not None and initial_state.shape != (b, P):
        raise ValueError(f"chunk_s5: initial_state must be [B={b}, P={P}] complex, got {list(initial_state.shape)}")
    log_L, B_bar = discretize(Lambda, B, dt, method)
    x0 = initial_state if initial_state is not None else torch.zeros(b, P, dtype=Lambda.dtype, device=u.device)
    if T == 0:
        return u.clone(), (x0 if output_final_state else None)
    x = _states(u, log_L, B_bar, x0, chunk_size)
    y = readout(x, C)
    if not causal:
        z = _states(u.flip(1), log_L, B_bar, torch.zeros_like(x0), chunk_size).flip(1)
        y = y + readout(z, C_backward)
    if D is not None:
        y = y + u * D
    return y.to(u.dtype), (x[:, -1] if output_final_state else None)

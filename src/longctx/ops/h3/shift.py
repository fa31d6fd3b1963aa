"""H3's shift SSM (Fu et al. 2023, §3.1): ``A`` is the shift matrix, so the SSM is a causal FIR
filter of length ``N`` over the last ``N`` inputs: ``y_t = sum_{j<N} kernel[c, j] x_{t-j}``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def shift_conv(x: Tensor, kernel: Tensor, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``x [B, T, C]``, ``kernel [C, N]``, ``history [B, N-1, C]`` (the inputs before x; zeros if
    None) -> ``(y [B, T, C], the new history [B, N-1, C])``."""
    B, _, C = x.shape
    N = kernel.shape[1]
    if kernel.dim() != 2 or kernel.shape[0] != C:
        raise ValueError(f"shift_conv: kernel must be [C={C}, N], got {list(kernel.shape)}")
    if history is None:
        history = x.new_zeros(B, N - 1, C)
    elif history.shape != (B, N - 1, C):
        raise ValueError(f"shift_conv: history must be [B={B}, N-1={N - 1}, C={C}], got {list(history.shape)}")
    full = torch.cat([history, x], dim=1)  # [B, N-1+T, C]
    # depthwise conv1d computes a correlation: flip the kernel so tap j multiplies x_{t-j}
    y = F.conv1d(full.transpose(1, 2), kernel.flip(1)[:, None, :], groups=C).transpose(1, 2)
    return y, full[:, full.shape[1] - (N - 1):]

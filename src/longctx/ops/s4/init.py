"""S4D initialisations of the diagonal ``A [H, N]`` (S4D §4.1, Table 1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def s4d_lin(H: int, N: int) -> Tensor:
    """S4D-Lin: ``A_n = -1/2 + i pi n`` (a damped Fourier basis)."""
    n = torch.arange(N, dtype=torch.float64)
    return torch.complex(torch.full((N,), -0.5, dtype=torch.float64), math.pi * n).expand(H, N).clone()


def s4d_inv(H: int, N: int) -> Tensor:
    """S4D-Inv: ``A_n = -1/2 + i N/pi (N/(2n+1) - 1)`` (approximates S4-LegS)."""
    n = torch.arange(N, dtype=torch.float64)
    imag = N / math.pi * (N / (2 * n + 1) - 1)
    return torch.complex(torch.full((N,), -0.5, dtype=torch.float64), imag).expand(H, N).clone()

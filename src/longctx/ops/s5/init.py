"""S5's initialisation: the eigenvalues of HiPPO-N, the normal part of HiPPO-LegS (S5 §4.1)."""

from __future__ import annotations

import torch
from torch import Tensor


def hippo_legs(N: int) -> Tensor:
    """HiPPO-LegS ``A [N, N]`` (S4 eq. 2 / HiPPO): ``-sqrt(2n+1) sqrt(2k+1)`` below the diagonal,
    ``-(n+1)`` on it, 0 above."""
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1)
    return A - torch.diag(n + 1)


def hippo_n_eigenvalues(N: int) -> Tensor:
    """Eigenvalues of ``A_N = A_LegS + P P^T`` with ``P_n = sqrt(n + 1/2)``: ``-1/2 + i w``
    (``A_N = -I/2 + skew-symmetric``); the ``N/2`` with ``w >= 0``, largest first."""
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    A_N = hippo_legs(N) + P[:, None] * P[None, :]
    eig = torch.linalg.eigvals(A_N)
    eig = eig[eig.imag >= 0]
    return eig[torch.argsort(eig.imag, descending=True)][: max(1, N // 2)]

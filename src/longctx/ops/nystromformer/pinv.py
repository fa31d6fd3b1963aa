"""The Moore-Penrose pseudo-inverse by the iterative method Nystromformer uses (Xiong et al. 2021,
§3, after Razavi et al. 2014), and the exact ``torch.linalg.pinv`` switch.

    Z_0     = A^T / (||A||_1 ||A||_inf)
    Z_{j+1} = 1/4 Z_j (13 I - A Z_j (15 I - A Z_j (7 I - A Z_j)))

Every ``Z_j`` is ``A^T f_j(A A^T)``, so in the singular basis of ``A`` each singular value
``sigma`` is mapped to ``z_j(sigma)`` with residual ``r_j = 1 - sigma z_j`` obeying
``r_{j+1} = r_j^3 (3 + r_j) / 4`` from ``r_0 = 1 - sigma^2 / (||A||_1 ||A||_inf)`` (in [0, 1)):
the iteration converges to ``A^+`` on every nonzero singular value, cubically once ``r < 1``, but
slowly (``1 - r`` grows about 3.25x per step) for ``sigma^2`` small next to the norm product. A
few iterations therefore invert the large singular values and damp the small ones. README.md has
the numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_positive_int


def iterative_pinv(A: Tensor, n_iter: int = 6) -> Tensor:
    """Approximate Moore-Penrose pseudo-inverse of ``A [..., p, q]`` -> ``Z [..., q, p]``.

    ``n_iter`` iterations of the method above, from the paper's initialisation (norms taken per
    matrix: ``||A||_1`` the largest column sum of ``|A|``, ``||A||_inf`` the largest row sum).
    Differentiable (matrix products only). A zero matrix gives zero (its pseudo-inverse).
    """
    n_iter = check_positive_int("pinv_iterations", n_iter)
    if not isinstance(A, Tensor) or A.dim() < 2:
        shape = list(A.shape) if isinstance(A, Tensor) else type(A).__name__
        raise ValueError(f"iterative_pinv: A must be a [..., p, q] matrix tensor, got {shape}")
    norm_1 = A.abs().sum(dim=-2).amax(dim=-1)  # [...] max column sum
    norm_inf = A.abs().sum(dim=-1).amax(dim=-1)  # [...] max row sum
    c = (norm_1 * norm_inf).clamp_min(torch.finfo(A.dtype).tiny)
    Z = A.transpose(-1, -2) / c[..., None, None]  # Z_0
    eye = torch.eye(A.shape[-2], dtype=A.dtype, device=A.device)
    for _ in range(n_iter):
        AZ = A @ Z  # [..., p, p]
        Z = 0.25 * Z @ (13 * eye - AZ @ (15 * eye - AZ @ (7 * eye - AZ)))
    return Z


def nystrom_pinv(A: Tensor, pinv_iterations: int | None) -> Tensor:
    """``torch.linalg.pinv(A)`` if ``pinv_iterations`` is None, else ``iterative_pinv``.

    Half-precision matrices are inverted in float32 (the result is cast back).
    """
    work = A.float() if A.dtype in (torch.float16, torch.bfloat16) else A
    if pinv_iterations is None:
        Z = torch.linalg.pinv(work)
    else:
        Z = iterative_pinv(work, pinv_iterations)
    return Z.to(A.dtype)


def check_pinv_iterations(value: object) -> int | None:
    """``None`` (exact pinv) or a positive int, else ``ValueError`` naming ``pinv_iterations``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"pinv_iterations must be a positive integer (iterations of the iterative pinv) or "
            f"None (exact torch.linalg.pinv), got {value!r}"
        )
    return value


__all__ = ["check_pinv_iterations", "iterative_pinv", "nystrom_pinv"]

"""Input checks shared by the delta-rule ops (DeltaNet and Gated DeltaNet).

The delta rule ``S_t = (I - beta_t k_t k_t^T) S_{t-1} + ...`` is non-expansive only when
``||k_t|| = 1`` and ``0 <= beta_t <= 2`` (the eigenvalue of ``I - beta k k^T`` along ``k`` is
``1 - beta ||k||^2``), so both are checked at the op's entry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.ops.common.checks import _shape, check_values

# allowed | ||k|| - 1 | when the caller says keys are already unit-norm (use_qk_l2norm=False)
KEY_NORM_TOL = {torch.float64: 1e-6, torch.float32: 1e-3}
HALF_KEY_NORM_TOL = 2e-2  # float16 / bfloat16
BETA_MIN, BETA_MAX = 0.0, 2.0


def check_beta(op: str, name: str, beta: Tensor, expected: tuple[int, ...]) -> None:
    """``beta`` has shape ``expected`` and every value lies in [0, 2]."""
    if not isinstance(beta, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(beta).__name__}")
    if tuple(beta.shape) != tuple(expected):
        raise ValueError(
            f"{op}: {name} must have shape [{', '.join(map(str, expected))}], got {_shape(beta)}"
        )
    if beta.numel() and check_values() and not bool(((beta >= BETA_MIN) & (beta <= BETA_MAX)).all()):
        bad = beta[~((beta >= BETA_MIN) & (beta <= BETA_MAX))]
        raise ValueError(
            f"{op}: {name} (the delta-rule step size) must lie in [0, 2], where "
            f"I - beta k k^T is non-expansive for unit keys; got {bad.flatten()[0].item():.4g}. "
            "Use e.g. sigmoid(x) or 2 * sigmoid(x)."
        )


def key_norm_tolerance(dtype: torch.dtype) -> float:
    return KEY_NORM_TOL.get(dtype, HALF_KEY_NORM_TOL)


def check_unit_keys(op: str, name: str, k: Tensor) -> None:
    """Every key has L2 norm 1 within a dtype-dependent tolerance (an all-zero key, a no-op
    write, is allowed too)."""
    if not k.numel() or not check_values():
        return
    norm = k.detach().to(torch.promote_types(k.dtype, torch.float32)).norm(dim=-1)
    dev = (norm - 1).abs()
    bad = (dev > key_norm_tolerance(k.dtype)) & (norm != 0)
    if bool(bad.any()):
        raise ValueError(
            f"{op}: {name} must be L2-normalised along the last dim (the delta rule is stable "
            f"only for ||k|| = 1); found a key of norm {norm[bad].flatten()[0].item():.6g} "
            f"(tolerance {key_norm_tolerance(k.dtype):g} for {k.dtype}). Pass use_qk_l2norm=True "
            "to normalise q and k inside the op."
        )


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / max(||x||, eps)`` along the last dim (differentiable)."""
    return F.normalize(x, p=2.0, dim=-1, eps=eps)


def prepare_qk(op: str, q: Tensor, k: Tensor, use_qk_l2norm: bool, dtype: torch.dtype,
               k_name: str = "k") -> tuple[Tensor, Tensor]:
    """Cast q, k to the compute ``dtype``; normalise them, or check that k is unit-norm."""
    if use_qk_l2norm:
        return l2norm(q.to(dtype)), l2norm(k.to(dtype))
    check_unit_keys(op, k_name, k)
    return q.to(dtype), k.to(dtype)

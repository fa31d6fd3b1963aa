"""Feature maps phi for linear attention, and the state checks shared by its three forms.

``phi`` is applied to ``scale * q`` and to ``k`` (last dim ``D`` -> ``F = feature_dim(...)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.ops.common.checks import check_state

FEATURE_MAPS: tuple[str, ...] = ("identity", "elu+1", "relu", "taylor")


def check_feature_map(op: str, feature_map: object) -> str:
    """Return ``feature_map`` if it is a known name, else raise ``ValueError`` listing them."""
    if not isinstance(feature_map, str) or feature_map not in FEATURE_MAPS:
        raise ValueError(
            f"{op}: unknown feature_map {feature_map!r}; valid: {', '.join(FEATURE_MAPS)}"
        )
    return feature_map


def feature_dim(feature_map: str, head_dim: int) -> int:
    """Feature dim ``F`` of ``phi``: ``head_dim``, or ``1 + D + D**2`` for ``"taylor"``."""
    check_feature_map("feature_dim", feature_map)
    return 1 + head_dim + head_dim * head_dim if feature_map == "taylor" else head_dim


def apply_feature_map(x: Tensor, feature_map: str) -> Tensor:
    """``phi(x)``: ``[..., D] -> [..., F]``."""
    if feature_map == "identity":
        return x
    if feature_map == "elu+1":
        return F.elu(x) + 1.0  # Katharopoulos et al. 2020, §3.2.1: phi(x) = elu(x) + 1
    if feature_map == "relu":
        return F.relu(x)
    # Based (Arora et al. 2024): 2nd-order Taylor of exp, phi(x) = [1, x, vec(x x^T) / sqrt 2],
    # so phi(q) . phi(k) = 1 + q.k + (q.k)^2 / 2.
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) * (1.0 / math.sqrt(2.0))
    return torch.cat([torch.ones_like(x[..., :1]), x, outer], dim=-1)


def taylor_kernel(x: Tensor) -> Tensor:
    """``phi(q) . phi(k)`` of the Taylor map from the dot products ``x = q . k``."""
    return 1.0 + x + 0.5 * x * x  # Arora et al. 2024 (Based), 2nd-order Taylor of exp(x)


def check_la_state(op: str, name: str, state: object, expected_s: tuple[int, ...]) -> None:
    """A linear-attention state is the tuple ``(S [B, H, F, Dv], z [B, H, F])``."""
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(
            f"{op}: {name} must be a tuple (S [B, H, F, Dv], z [B, H, F]), "
            f"got {type(state).__name__}"
            + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
        )
    check_state(op, f"{name}[0] (S)", state[0], expected_s)
    check_state(op, f"{name}[1] (z)", state[1], expected_s[:3])


__all__ = ["FEATURE_MAPS", "apply_feature_map", "check_feature_map", "feature_dim", "taylor_kernel"]

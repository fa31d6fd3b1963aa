"""Small pieces shared by several layers."""

from __future__ import annotations

from torch import Tensor

from longctx.ops.common import check_positive_int


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """``[B, T, n_heads * D] -> [B, T, n_heads, D]``."""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1)


def merge_heads(x: Tensor) -> Tensor:
    """``[B, T, H, D] -> [B, T, H * D]``."""
    B, T = x.shape[:2]
    return x.reshape(B, T, -1)


def check_positive(owner: str, name: str, value: object) -> None:
    check_positive_int(f"{owner}.{name}", value)


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")

"""Argument checks for the Linformer projections ``E``, ``F``."""

from __future__ import annotations

from torch import Tensor


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_projections(
    op: str, E: object, F: object, T: int, Hk: int, like: Tensor
) -> tuple[Tensor, Tensor]:
    """Validate ``E``, ``F`` (``[k, max_len]`` shared by all heads, or ``[Hk, k, max_len]`` one per
    key/value head) against a sequence of length ``T``; return their first ``T`` columns.

    Using the first ``T`` columns is the same as zero-padding the keys/values to ``max_len``: the
    padded rows contribute ``E[:, j] * 0`` to ``E K``.
    """
    for name, t in (("E", E), ("F", F)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (2, 3):
            raise ValueError(
                f"{op}: {name} must be [k, max_len] (shared by all heads) or [Hk, k, max_len] "
                f"(one per key/value head), got shape {_shape(t)}"
            )
        if not t.is_floating_point() or t.dtype != like.dtype:
            raise TypeError(f"{op}: {name} must have q's dtype {like.dtype}, got {t.dtype}")
        if t.device != like.device:
            raise ValueError(f"{op}: {name} must be on q's device {like.device}, got {t.device}")
    if E.shape != F.shape:
        raise ValueError(
            f"{op}: E and F must have the same shape; got E {_shape(E)}, F {_shape(F)}"
        )
    if E.dim() == 3 and E.shape[0] != Hk:
        raise ValueError(
            f"{op}: per-head E, F [Hk, k, max_len] must have Hk={Hk} (the key/value heads), "
            f"got shape {_shape(E)}"
        )
    if E.shape[-2] == 0:
        raise ValueError(
            f"{op}: the projected length k (E.shape[-2]) must be >= 1, got {_shape(E)}"
        )
    max_len = E.shape[-1]
    if T > max_len:
        raise ValueError(
            f"{op}: sequence length T={T} exceeds max_len={max_len} (the number of columns of E "
            f"and F); Linformer's projections are only defined for T <= max_len"
        )
    return E[..., :T], F[..., :T]

"""The WKV state and argument checks shared by the forms."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_values

WKVState = tuple[Tensor, Tensor, Tensor]  # (a, b, p) [B, C] each: sums a e^p, b e^p


def _shape(t: object) -> str:
    return str(list(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_wkv(op: str, k: Tensor, v: Tensor, w: Tensor, u: Tensor,
              state: WKVState | None) -> tuple[int, int, int]:
    """Validate ``k, v [B, T, C]``, ``w, u [C]`` (``w > 0``) and the state ``(a, b, p)`` of
    ``[B, C]`` tensors or None; return ``(B, T, C)``."""
    if not isinstance(k, Tensor) or k.dim() != 3:
        raise ValueError(f"{op}: k must be [B, T, C], got {_shape(k)}")
    if not k.is_floating_point():
        raise TypeError(f"{op}: k must be a floating-point tensor, got {k.dtype}")
    B, T, C = k.shape
    if not isinstance(v, Tensor) or v.shape != k.shape:
        raise ValueError(f"{op}: v must have k's shape [B={B}, T={T}, C={C}], got {_shape(v)}")
    for name, p in (("w", w), ("u", u)):
        if not isinstance(p, Tensor) or p.shape != (C,):
            raise ValueError(f"{op}: {name} must be [C={C}], got {_shape(p)}")
    for name, t in (("v", v), ("w", w), ("u", u)):
        if t.dtype != k.dtype:
            raise TypeError(f"{op}: {name} must have k's dtype {k.dtype}, got {t.dtype}")
        if t.device != k.device:
            raise ValueError(f"{op}: {name} must be on k's device {k.device}, got {t.device}")
    if check_values() and not bool((w > 0).all()):
        raise ValueError(f"{op}: the decay w must be > 0 in every channel (RWKV uses "
                         f"w = exp(time_decay)); got min {w.min().item():.4g}")
    if state is not None:
        if (not isinstance(state, tuple) or len(state) != 3
                or any(not isinstance(s, Tensor) or s.shape != (B, C) for s in state)):
            got = (", ".join(_shape(s) for s in state) if isinstance(state, tuple)
                   else type(state).__name__)
            raise ValueError(f"{op}: the state must be a tuple (a, b, p) of [B={B}, C={C}] "
                             f"tensors, got ({got})")
        for name, s in zip("abp", state):
            if not s.is_floating_point() or s.device != k.device:
                raise ValueError(f"{op}: state {name} must be a floating-point tensor on "
                                 f"{k.device}, got {s.dtype} on {s.device}")
    return B, T, C


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half inputs are computed (and the state kept) in float32."""
    return torch.promote_types(dtype, torch.float32)

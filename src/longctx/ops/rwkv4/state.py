"""The WKV state and argument checks shared by the forms."""

from __future__ import annotations

from torch import Tensor

WKVState = tuple[Tensor, Tensor, Tensor]  # (a, b, p) [B, C] each: sums a e^p, b e^p


def check_wkv(op: str, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: WKVState | None) -> tuple[int, int, int]:
    if not isinstance(k, Tensor) or k.dim() != 3:
        raise ValueError(f"{op}: k must be [B, T, C], got {list(k.shape) if isinstance(k, Tensor) else type(k).__name__}")
    B, T, C = k.shape
    if not isinstance(v, Tensor) or v.shape != k.shape:
        raise ValueError(f"{op}: v must have k's shape [B={B}, T={T}, C={C}], got {list(v.shape)}")
    for name, p in (("w", w), ("u", u)):
        if not isinstance(p, Tensor) or p.shape != (C,):
            raise ValueError(f"{op}: {name} must be [C={C}], got {list(p.shape) if isinstance(p, Tensor) else p!r}")
    if not bool((w > 0).all()):
        raise ValueError(f"{op}: the decay w must be > 0 in every channel (RWKV uses w = exp(time_decay))")
    if state is not None and (not isinstance(state, tuple) or len(state) != 3
                              or any(s.shape != (B, C) for s in state)):
        raise ValueError(f"{op}: the state must be a tuple (a, b, p) of [B={B}, C={C}] tensors")
    return B, T, C

"""Argument checks shared by the RWKV-6 forms: clear errors that name the argument.

Layout: ``r, k [B, T, H, K]``, ``v [B, T, H, V]``, log-decay ``w [B, T, H, K]`` (``<= 0``),
bonus ``u [H, K]``, state ``S [B, H, K, V]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import _shape, check_values


def _check_tensor(op: str, name: str, t: object, expected: tuple[int, ...], like: Tensor,
                  layout: str, *, same_dtype: bool = True) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {layout} = "
                         f"[{', '.join(map(str, expected))}], got {_shape(t)}")
    if same_dtype and t.dtype != like.dtype:
        raise TypeError(f"{op}: {name} must have r's dtype {like.dtype}, got {t.dtype}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{op}: {name} must be on r's device {like.device}, got {t.device}")


def check_rwkv6(op: str, r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor,
                state: Tensor | None) -> tuple[int, int, int, int, int]:
    """Validate the inputs of an RWKV-6 form; return ``(B, T, H, K, V)``."""
    if not isinstance(r, Tensor) or r.dim() != 4:
        got = _shape(r) if isinstance(r, Tensor) else type(r).__name__
        raise ValueError(f"{op}: r must be [B, T, H, K], got {got}")
    if not r.is_floating_point():
        raise TypeError(f"{op}: r must be a floating-point tensor, got {r.dtype}")
    B, T, H, K = r.shape
    _check_tensor(op, "k", k, (B, T, H, K), r, "[B, T, H, K] like r")
    if not isinstance(v, Tensor) or v.dim() != 4 or v.shape[:3] != (B, T, H):
        got = _shape(v) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"{op}: v must be [B={B}, T={T}, H={H}, V], got {got}")
    V = v.shape[3]
    _check_tensor(op, "v", v, (B, T, H, V), r, "[B, T, H, V]")
    _check_tensor(op, "w", w, (B, T, H, K), r, "[B, T, H, K] like r")
    _check_tensor(op, "u", u, (H, K), r, "[H, K]")
    if w.numel() and check_values() and bool((w > 0).any()):
        raise ValueError(
            f"{op}: w is the log of the decay, log w_t = -exp(d_t), and must be <= 0; got max "
            f"{w.max().item():.4g}. Pass -exp(d), not the decay exp(-exp(d)) itself or d.")
    if state is not None:
        # any float dtype: the forms compute in float32 at least (a bfloat16 run keeps S in float32)
        _check_tensor(op, "initial_state", state, (B, H, K, V), r, "[B, H, K, V]", same_dtype=False)
    return B, T, H, K, V


def check_step(op: str, r_t: Tensor, k_t: Tensor, v_t: Tensor, w_t: Tensor) -> None:
    """One decode step takes ``[B, H, K]`` (``v_t [B, H, V]``) tensors, no time axis."""
    for name, t in (("r_t", r_t), ("k_t", k_t), ("v_t", v_t), ("w_t", w_t)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            got = _shape(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{op}: {name} for one decode step must be [B, H, K], got {got}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half inputs are computed (and the state kept) in float32."""
    return torch.promote_types(dtype, torch.float32)


__all__ = ["check_rwkv6", "check_step", "compute_dtype"]

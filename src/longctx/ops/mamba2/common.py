"""Validation and small helpers for the SSD op (Mamba-2): shapes, signs, groups.

Checks run once at the entry of an op, never inside loops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import _shape, check_values


def _dims(names: str, sizes: tuple[int, ...]) -> str:
    return f"[{names}] = [{', '.join(map(str, sizes))}]"


def _float_tensor(op: str, name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    return t


def _check_shape(op: str, name: str, t: Tensor, names: str, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {_dims(names, expected)}, got {_shape(t)}")


def check_ssd_inputs(
    op: str,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    step: bool = False,
) -> tuple[int, int, int, int, int, int]:
    """Validate SSD inputs; return ``(batch, T, H, P, G, N)`` (``T = 1`` for a step).

    Sequence: ``x [B, T, H, P]``, ``dt [B, T, H]`` (>= 0), ``A [H]`` (<= 0),
    ``B, C [B, T, G, N]`` with ``G | H``, ``D [H]``. A step drops the ``T`` dim.
    """
    t_name, t_suffix = ("", "_t") if step else ("T, ", "")
    xn, dtn, Bn, Cn = (f"{n}{t_suffix}" for n in ("x", "dt", "B", "C"))
    for name, t in ((xn, x), (dtn, dt), ("A", A), (Bn, B), (Cn, C)):
        _float_tensor(op, name, t)
    n_dims = 3 if step else 4
    for name, t in ((xn, x), (Bn, B), (Cn, C)):
        if t.dim() != n_dims:
            what = "[B, {}H, P]" if name == xn else "[B, {}G, N]"
            raise ValueError(
                f"{op}: {name} must have {n_dims} dims {what.format(t_name)}, got shape {_shape(t)}"
            )
    lead = tuple(x.shape[:-2])  # (batch, T) or (batch,)
    H, P = x.shape[-2:]
    if B.shape != C.shape:
        raise ValueError(
            f"{op}: {Bn} and {Cn} must have the same shape [B, {t_name}G, N]; "
            f"got {Bn} {_shape(B)}, {Cn} {_shape(C)}"
        )
    if tuple(B.shape[:-2]) != lead:
        raise ValueError(
            f"{op}: {Bn} and {Cn} must share x's batch{' and length' if not step else ''} "
            f"{list(lead)}; got {Bn} {_shape(B)}, {xn} {_shape(x)}"
        )
    G, N = B.shape[-2:]
    if G == 0 or H % G != 0:
        raise ValueError(
            f"{op}: the number of groups G={G} of {Bn}/{Cn} must divide the number of heads "
            f"H={H} of {xn} (head h uses group h // (H // G))"
        )
    if not (x.dtype == B.dtype == C.dtype):
        raise TypeError(f"{op}: {xn}, {Bn}, {Cn} must share a dtype; got {x.dtype}, {B.dtype}, {C.dtype}")
    _check_shape(op, dtn, dt, f"B, {t_name}H", lead + (H,))
    _check_shape(op, "A", A, "H", (H,))
    if D is not None:
        _check_shape(op, "D", _float_tensor(op, "D", D), "H", (H,))
    devices = {t.device for t in (x, dt, A, B, C) + ((D,) if D is not None else ())}
    if len(devices) > 1:
        raise ValueError(f"{op}: all inputs must be on one device; got {sorted(map(str, devices))}")
    if dt.numel() and check_values() and bool((dt < 0).any()):
        raise ValueError(
            f"{op}: {dtn} is a step size and must be >= 0 (e.g. softplus(dt_raw + dt_bias)); "
            f"got min {dt.min().item():.4g}"
        )
    if A.numel() and check_values() and bool((A > 0).any()):
        raise ValueError(
            f"{op}: A must be <= 0 (a decay rate, A = -exp(A_log)); got max {A.max().item():.4g}. "
            "Pass -exp(A_log), not A_log or exp(A_log)."
        )
    return lead[0], (1 if step else lead[1]), H, P, G, N


def compute_dtype(x: Tensor) -> torch.dtype:
    """Half-precision inputs are computed in float32 (like every op of the package)."""
    return torch.promote_types(x.dtype, torch.float32)


def expand_groups(t: Tensor, n_heads: int) -> Tensor:
    """``[..., G, N] -> [..., H, N]``: head h reads group h // (H // G) (Dao & Gu 2024, §7.2)."""
    return t.repeat_interleave(n_heads // t.shape[-2], dim=-2)


__all__ = ["check_ssd_inputs", "compute_dtype", "expand_groups"]

"""Validation and layout helpers shared by the three forms of the selective scan.

Errors name the argument and the expected shape or range; checks run once per call.
"""

from __future__ import annotations

from functools import reduce

import torch
from torch import Tensor

from longctx.ops.common.checks import _shape, check_values


def _check_tensor(op: str, name: str, t: object) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_scan_inputs(
    op: str,
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    *,
    step: bool = False,
) -> tuple[int, int, int, int, int]:
    """Validate ``u, dt [B, T, Dn]``, ``A [Dn, N]``, ``B, C [B, T, N]`` or ``[B, T, G, N]``,
    ``D [Dn]``; with ``step`` the same without the time axis (names get a ``_t`` suffix).

    Returns ``(batch, T, Dn, N, G)`` (T = 1 for a step, G = 1 for ungrouped B/C). Also checks
    the ranges that make the scan a decay: dt >= 0 (after softplus; 0 = the token is skipped,
    which float32 softplus returns for inputs below about -104) and A < 0.
    """
    sfx, lead, t_dim = ("_t", "B, ", 0) if step else ("", "B, T, ", 1)
    named = [(f"u{sfx}", u), (f"dt{sfx}", dt), ("A", A), (f"B{sfx}", B), (f"C{sfx}", C)]
    for name, t in named + ([("D", D)] if D is not None else []):
        _check_tensor(op, name, t)
    if u.dim() != 2 + t_dim:
        raise ValueError(f"{op}: u{sfx} must have {2 + t_dim} dims [{lead}Dn], got shape {_shape(u)}")
    if dt.shape != u.shape:
        raise ValueError(f"{op}: dt{sfx} must have the shape of u{sfx} {_shape(u)}, got {_shape(dt)}")
    Dn = u.shape[-1]
    if A.dim() != 2 or A.shape[0] != Dn:
        raise ValueError(f"{op}: A must have shape [Dn={Dn}, N], got {_shape(A)}")
    N = A.shape[1]
    lead_shape = tuple(u.shape[:-1])  # (batch,) or (batch, T)
    if B.dim() not in (2 + t_dim, 3 + t_dim) or tuple(B.shape[: 1 + t_dim]) != lead_shape or B.shape[-1] != N:
        expect = ", ".join(map(str, lead_shape))
        raise ValueError(
            f"{op}: B{sfx} must have shape [{expect}, N={N}] or [{expect}, G, N={N}] (N from A), "
            f"got {_shape(B)}"
        )
    if C.shape != B.shape:
        raise ValueError(f"{op}: C{sfx} must have the shape of B{sfx} {_shape(B)}, got {_shape(C)}")
    G = 1 if B.dim() == 2 + t_dim else B.shape[-2]
    if G == 0 or Dn % G != 0:
        raise ValueError(f"{op}: the number of B/C groups G={G} must divide Dn={Dn}")
    if D is not None and tuple(D.shape) != (Dn,):
        raise ValueError(f"{op}: D must have shape [Dn={Dn}], got {_shape(D)}")
    devices = {t.device for _, t in named} | ({D.device} if D is not None else set())
    if len(devices) > 1:
        raise ValueError(f"{op}: all inputs must be on one device, got {sorted(map(str, devices))}")
    if dt.numel() and check_values() and not bool((dt >= 0).all()):
        raise ValueError(
            f"{op}: dt{sfx} is the step size Delta and must be >= 0 (pass softplus(.) of the "
            f"projection); got min {dt.min().item():.4g}"
        )
    if A.numel() and check_values() and not bool((A < 0).all()):
        raise ValueError(
            f"{op}: A must be < 0 so that exp(dt A) is a decay (pass A = -exp(A_log)); "
            f"got max {A.max().item():.4g}"
        )
    batch = u.shape[0]
    return batch, (1 if step else u.shape[1]), Dn, N, G


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float32 for half inputs, else the promoted dtype of the inputs (float64 stays float64)."""
    return reduce(torch.promote_types, [t.dtype for t in tensors if t is not None], torch.float32)


def as_groups(x: Tensor, dims: int) -> Tensor:
    """B or C ``[..., N]`` (ungrouped, ``dims`` dims) or ``[..., G, N]`` -> ``[..., G, N]``."""
    return x.unsqueeze(-2) if x.dim() == dims else x


def expand_groups(x: Tensor, Dn: int) -> Tensor:
    """``[..., G, N] -> [..., Dn, N]``: channel d reads group d // (Dn / G)."""
    return x.repeat_interleave(Dn // x.shape[-2], dim=-2)

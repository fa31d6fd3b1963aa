"""S5 (Smith, Warrington & Linderman 2023): one MIMO SSM over all ``H`` channels with a diagonal
complex state of size ``P``: ``x_k = Lambda_bar x_{k-1} + B_bar u_k``, ``y_k = 2 Re(C x_k) + D u_k``
(conjugate pairs, as S5's ``conj_sym``: P complex states stand for 2P real ones).

Shapes: ``u [B, T, H]`` real, ``Lambda [P]`` complex, ``B [P, H]`` and ``C [H, P]`` complex,
``dt [P] > 0`` (one step per state, S5 §3.2), ``D [H]``; state ``x [B, P]`` complex.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.s4.ssm import check_steps


def check_s5(op: str, u: Tensor, Lambda: Tensor, B: Tensor, C: Tensor, dt: Tensor, D: Tensor | None,
             method: str) -> tuple[int, int, int, int]:
    if not isinstance(u, Tensor) or u.dim() != 3 or u.is_complex():
        raise ValueError(f"{op}: u must be a real tensor [B, T, H], got "
                         f"{list(u.shape) if isinstance(u, Tensor) else type(u).__name__}")
    b, T, H = u.shape
    if not isinstance(Lambda, Tensor) or not Lambda.is_complex() or Lambda.dim() != 1:
        raise ValueError(f"{op}: Lambda must be a complex tensor [P]")
    P = Lambda.shape[0]
    for name, p, shape in (("B", B, (P, H)), ("C", C, (H, P))):
        if not isinstance(p, Tensor) or not p.is_complex() or tuple(p.shape) != shape:
            raise ValueError(f"{op}: {name} must be a complex tensor {list(shape)}, got "
                             f"{p.dtype if isinstance(p, Tensor) else type(p).__name__} "
                             f"{list(p.shape) if isinstance(p, Tensor) else ''}")
    check_steps(op, dt, "P", P, D, method)
    if D is not None and D.shape != (H,):
        raise ValueError(f"{op}: D must be a tensor [H={H}] or None")
    return b, T, H, P


def discretize(Lambda: Tensor, B: Tensor, dt: Tensor, method: str = "zoh") -> tuple[Tensor, Tensor]:
    """``(log Lambda_bar [P], B_bar [P, H])`` (S5 §2.2 / Appendix: ZOH and bilinear)."""
    dtL = dt * Lambda
    if method == "zoh":
        return dtL, ((torch.exp(dtL) - 1) / Lambda)[:, None] * B
    denom = 1 - dtL / 2
    return torch.log((1 + dtL / 2) / denom), (dt / denom)[:, None] * B


def readout(x: Tensor, C: Tensor) -> Tensor:
    """``2 Re(C x)``: ``x [..., P]`` -> ``[..., H]``."""
    return 2 * (x @ C.transpose(0, 1)).real

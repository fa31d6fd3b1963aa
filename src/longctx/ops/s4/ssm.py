"""Diagonal state-space model pieces: parameter checks, discretisation, the Vandermonde kernel.

The SSM (S4D, Gu, Gupta, Goel & Ré 2022, eq. 1): ``x'(t) = A x(t) + B u(t)``, ``y = C x + D u``
with ``A`` diagonal and complex. Each of the ``H`` channels is an independent SSM with ``N``
complex states standing for ``2N`` real ones (conjugate pairs, S4D §3.1): the output is
``2 Re(C x)``.

Shapes: ``A, B, C [H, N]`` complex, ``dt [H]`` positive, ``D [H]`` real, ``u [B, T, H]`` real,
states ``x [B, H, N]`` complex.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_values

METHODS = ("zoh", "bilinear")


def check_ssm(op: str, u: Tensor, A: Tensor, B: Tensor, C: Tensor, dt: Tensor, D: Tensor | None,
              method: str) -> tuple[int, int, int, int]:
    """Validate the inputs; returns ``(batch, T, H, N)``."""
    if not isinstance(u, Tensor) or u.dim() != 3 or u.is_complex():
        raise ValueError(f"{op}: u must be a real tensor [B, T, H], got "
                         f"{list(u.shape) if isinstance(u, Tensor) else type(u).__name__}")
    b, T, H = u.shape
    for name, p in (("A", A), ("B", B), ("C", C)):
        if not isinstance(p, Tensor) or not p.is_complex() or p.dim() != 2 or p.shape[0] != H:
            got = f"{p.dtype} {list(p.shape)}" if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"{op}: {name} must be a complex tensor [H={H}, N], got {got}")
    N = A.shape[1]
    if B.shape != A.shape or C.shape != A.shape:
        raise ValueError(f"{op}: A, B, C must share the shape [H, N]; got A {list(A.shape)}, "
                         f"B {list(B.shape)}, C {list(C.shape)}")
    check_steps(op, dt, "H", H, D, method)
    if D is not None and D.shape != (H,):
        raise ValueError(f"{op}: D must be a tensor [H={H}] or None")
    return b, T, H, N


def check_steps(op: str, dt: Tensor, dim: str, n: int, D: Tensor | None, method: str) -> None:
    """``dt [n] > 0`` real, ``D [H]`` or None, a known discretisation (shared by S4D and S5)."""
    if not isinstance(dt, Tensor) or dt.shape != (n,) or dt.is_complex():
        raise ValueError(f"{op}: dt must be a real tensor [{dim}={n}], got "
                         f"{list(dt.shape) if isinstance(dt, Tensor) else type(dt).__name__}")
    if check_values() and not bool((dt > 0).all()):
        raise ValueError(f"{op}: the step dt must be > 0 everywhere (got min {float(dt.min()):.3g}); "
                         "a non-positive step has no stable discretisation (parameterise it as exp(log_dt))")
    if D is not None and (not isinstance(D, Tensor) or D.dim() != 1):
        raise ValueError(f"{op}: D must be a tensor [H] or None")
    if method not in METHODS:
        raise ValueError(f"{op}: discretization must be one of {METHODS}, got {method!r}")


def discretize(A: Tensor, B: Tensor, dt: Tensor, method: str = "zoh") -> tuple[Tensor, Tensor]:
    """``(log A_bar, B_bar)`` for step ``dt`` (S4D §2, eq. 3-4; S4 §2.3 for bilinear).

    ZOH: ``A_bar = exp(dt A)``, ``B_bar = (exp(dt A) - 1) / A * B``.
    Bilinear: ``A_bar = (1 + dt A / 2) / (1 - dt A / 2)``, ``B_bar = dt / (1 - dt A / 2) * B``.
    ``log A_bar`` (principal branch) gives ``A_bar^l = exp(l log A_bar)`` exactly for integer l.
    """
    dtA = dt[:, None] * A  # [H, N]
    if method == "zoh":
        return dtA, (torch.exp(dtA) - 1) / A * B
    denom = 1 - dtA / 2
    return torch.log((1 + dtA / 2) / denom), dt[:, None] / denom * B


def vandermonde_kernel(log_A_bar: Tensor, C_tilde: Tensor, L: int, block: int = 64,
                       conjugate_pairs: bool = True) -> Tensor:
    """``K [..., H, L]`` real: ``K[h, l] = 2 Re(sum_n C_tilde[h, n] exp(l log_A_bar[h, n]))``
    (S4D §3.1: a Vandermonde matrix-vector product; ``C_tilde = C * B_bar [..., H, N]``).
    ``conjugate_pairs=False``: the plain sum (no ``2 Re``), for real SSMs such as MEGA's EMA.

    Blocked: with ``l = block * k + j``, ``A^l = A^(block k) A^j``, so the product is one batched
    matmul ``[H, L/block, N] @ [H, N, block]``: O(H N L) multiply-adds but only
    O(H N (L/block + block)) exponentials and memory, instead of an ``[H, N, L]`` power table.
    """
    b = max(1, min(block, L))
    nb = -(-L // b)
    dev = log_A_bar.device
    inner = torch.exp(log_A_bar[:, :, None] * torch.arange(b, device=dev))  # [H, N, b]
    outer = torch.exp(log_A_bar[:, None, :] * (b * torch.arange(nb, device=dev))[:, None])  # [H, nb, N]
    K = (C_tilde[..., None, :] * outer) @ inner  # [..., H, nb, b]
    K = K.real.reshape(*K.shape[:-2], nb * b)[..., :L]
    return 2 * K if conjugate_pairs else K


def fft_conv(u: Tensor, K: Tensor, D: Tensor | None = None) -> Tensor:
    """Causal convolution ``y[t] = sum_{s<=t} K[t-s] u[s] (+ D u[t])`` by FFT of length ``2T``:
    ``u [B, T, H]``, ``K [H, >= T]`` -> ``[B, T, H]``; O(T log T)."""
    T = u.shape[1]
    n = 2 * T
    Uf = torch.fft.rfft(u.transpose(1, 2), n=n)  # [B, H, T + 1]
    Kf = torch.fft.rfft(K[:, :T], n=n)  # [H, T + 1]
    y = torch.fft.irfft(Uf * Kf, n=n)[..., :T].transpose(1, 2)
    return y if D is None else y + u * D


def anticausal_fft_conv(u: Tensor, K: Tensor) -> Tensor:
    """``y[t] = sum_{s>t} K[s-t-1] u[s]``: the backward half of a bidirectional SSM (S4's
    bidirectional kernel: the reversed input through a second kernel, lagged by one so the
    current token is counted once)."""
    T = u.shape[1]
    y = fft_conv(u.flip(1), K).flip(1)  # sum_{s>=t} K[s-t] u[s]
    return torch.cat([y[:, 1:], y.new_zeros(y[:, :1].shape)], dim=1) if T else y


def state_after(u: Tensor, log_A_bar: Tensor, B_bar: Tensor, x0: Tensor | None, block: int = 64) -> Tensor:
    """The state after the whole sequence: ``x_T = sum_l A_bar^(T-1-l) B_bar u_l + A_bar^T x0``
    (the recurrence summed in closed form, blocked as ``vandermonde_kernel``) -> ``[B, H, N]``."""
    bsz, T, H = u.shape
    b = max(1, min(block, T))
    nb = -(-T // b)
    dev = u.device
    rev = torch.cat([u.flip(1), u.new_zeros(bsz, nb * b - T, H)], dim=1)  # s = T-1-l, padded
    rev = rev.reshape(bsz, nb, b, H).to(log_A_bar.dtype)
    inner = torch.exp(log_A_bar[:, :, None] * torch.arange(b, device=dev))  # [H, N, b]: A^j
    outer = torch.exp(log_A_bar[:, None, :] * (b * torch.arange(nb, device=dev))[:, None])  # [H, nb, N]
    x = torch.einsum("bkjh,hnj,hkn->bhn", rev, inner, outer) * B_bar
    if x0 is not None:
        x = x + torch.exp(T * log_A_bar) * x0
    return x

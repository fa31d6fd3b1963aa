"""S4 proper (Gu, Goel & Ré 2022, "Efficiently Modeling Long Sequences with Structured State
Spaces"): a diagonal-plus-low-rank state matrix ``A = Lambda - P Q^*`` (NPLR HiPPO-LegS
diagonalised), bilinear discretisation, and the convolution kernel by the generating function
at the roots of unity: Cauchy kernel + Woodbury identity + inverse FFT (S4 §3.3, Algorithm 1).

Shapes: ``Lambda [H, N]``, ``P, Q [H, N]`` (rank 1), ``B, C [H, N]`` complex, ``dt [H]``.
The output is ``Re`` of the complex SSM (the HiPPO state is real; after the unitary change of
basis it is complex, and ``Re`` of the readout recovers the real system).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longctx.ops.s5.init import hippo_legs


def hippo_legs_nplr(N: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(Lambda [N], P [N], B [N], V [N, N])`` with ``A_LegS = V (diag(Lambda) - P P^*) V^*``
    and ``B_LegS = V B`` (S4 §3.1, Theorem 1: HiPPO-LegS is normal plus low rank)."""
    n = torch.arange(N, dtype=torch.float64)
    p = torch.sqrt(n + 0.5)  # A_LegS + p p^T is normal: -1/2 I + skew-symmetric
    normal = hippo_legs(N) + p[:, None] * p[None, :]
    Lambda, V = torch.linalg.eig(normal)  # unitary V (a normal matrix)
    b = torch.sqrt(2 * n + 1)  # B of HiPPO-LegS
    Vh = V.conj().transpose(0, 1)
    return Lambda, Vh @ p.to(V.dtype), Vh @ b.to(V.dtype), V


def dense_A(Lambda: Tensor, P: Tensor, Q: Tensor) -> Tensor:
    """``A = diag(Lambda) - P Q^*`` as dense ``[H, N, N]``."""
    return torch.diag_embed(Lambda) - P[..., :, None] * Q[..., None, :].conj()


def bilinear(A: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Dense bilinear discretisation: ``A_bar = (I - dt/2 A)^-1 (I + dt/2 A)``,
    ``B_bar = (I - dt/2 A)^-1 dt B`` (S4 eq. 3)."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    half = dt[:, None, None] / 2 * A
    inv = torch.linalg.inv(eye - half)
    return inv @ (eye + half), (inv @ (dt[:, None] * B)[..., None])[..., 0]


def naive_dplr_kernel(Lambda: Tensor, P: Tensor, Q: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int) -> Tensor:
    """``K_l = Re(C^* ... )``: ``K_l = Re(C A_bar^l B_bar)`` by dense powers (O(N^2 L) reference)."""
    A_bar, B_bar = bilinear(dense_A(Lambda, P, Q), B, dt)
    x, out = B_bar, []
    for _ in range(L):
        out.append((C * x).sum(-1).real)
        x = (A_bar @ x[..., None])[..., 0]
    return torch.stack(out, -1)


def dplr_kernel(Lambda: Tensor, P: Tensor, Q: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int) -> Tensor:
    """The same kernel in O(N L + L log L) per channel (S4 Algorithm 1):

    1. ``C_tilde = (I - A_bar^L)^T C`` (the truncated generating function's correction);
    2. at ``omega_k = exp(-2 pi i k / L)``: ``g = (2/dt) (1 - omega) / (1 + omega)``;
       Cauchy sums ``k_xy = sum_n x_n y_n / (g - Lambda_n)``;
       ``K_hat = 2 / (1 + omega) [k_CB - k_CP (1 + k_QP)^-1 k_QB]`` (Woodbury);
    3. ``K = Re(ifft(K_hat))``.
    Step 1 uses one dense power ``A_bar^L`` (repeated squaring), O(N^3 log L): fine for the
    N of S4 (64) and done once per kernel.
    """
    A_bar, _ = bilinear(dense_A(Lambda, P, Q), B, dt)
    A_L = torch.linalg.matrix_power(A_bar, L)
    eye = torch.eye(A_bar.shape[-1], dtype=A_bar.dtype, device=A_bar.device)
    C_t = ((eye - A_L).transpose(-1, -2) @ C[..., None])[..., 0]  # [H, N]: C (I - A_bar^L)
    k = torch.arange(L, device=Lambda.device, dtype=Lambda.real.dtype)
    omega = torch.exp(-2j * math.pi * k / L)  # [L] roots of unity
    g = (2.0 / dt[:, None]) * (1 - omega) / (1 + omega)  # [H, L]
    denom = 1.0 / (g[:, :, None] - Lambda[:, None, :])  # [H, L, N] Cauchy kernel

    def cauchy(x: Tensor, y: Tensor) -> Tensor:
        return (denom * (x * y)[:, None, :]).sum(-1)  # [H, L]

    Qc = Q.conj()
    k_hat = 2 / (1 + omega) * (cauchy(C_t, B) - cauchy(C_t, P) * cauchy(Qc, B) / (1 + cauchy(Qc, P)))
    return torch.fft.ifft(k_hat, n=L).real


def dplr_step(u_t: Tensor, state: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One recurrent step with the dense discretised matrices: ``u_t [B, H]``, ``state [B, H, N]``
    -> ``(y_t = Re(C x) [B, H], x)`` (S4 §2.3: the recurrent view; ``D u`` is added by the caller)."""
    x = (A_bar @ state[..., None])[..., 0] + B_bar * u_t[..., None]
    return (C * x).sum(-1).real.to(u_t.dtype), x

"""S4 proper (Gu, Goel & Ré 2022, "Efficiently Modeling Long Sequences with Structured State
Spaces"): a diagonal-plus-low-rank state matrix ``A = Lambda - P Q^*`` (NPLR HiPPO-LegS
diagonalised), bilinear or ZOH discretisation, and the convolution kernel: for bilinear by the
generating function at the roots of unity, Cauchy kernel + Woodbury identity + inverse FFT (S4 §3.3,
Algorithm 1); for ZOH (``exp(dt A)`` is not a resolvent of the DPLR ``A``, so Algorithm 1 does not
apply) by blocked dense powers of ``A_bar``, exact and O(N^2 L + N^3 log L) per channel.

Shapes: ``Lambda [H, N]``, ``P, Q [H, N]`` (rank 1), ``B, C [H, N]`` complex, ``dt [H]``.
The output is ``Re`` of the complex SSM (the HiPPO state is real; after the unitary change of
basis it is complex, and ``Re`` of the readout recovers the real system).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longctx.ops.s4.ssm import check_steps
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


def check_dplr_steps(op: str, Lambda: Tensor, dt: Tensor, method: str) -> None:
    """``dt [H]`` real and > 0 (the error names ``dt``), ``method`` in ``("zoh", "bilinear")``."""
    check_steps(op, dt, "H", Lambda.shape[0], None, method)


def bilinear(A: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Dense bilinear discretisation: ``A_bar = (I - dt/2 A)^-1 (I + dt/2 A)``,
    ``B_bar = (I - dt/2 A)^-1 dt B`` (S4 eq. 3). ``A [H, N, N]``, ``B [H, N]``, ``dt [H]``."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    half = dt[:, None, None] / 2 * A
    inv = torch.linalg.inv(eye - half)
    return inv @ (eye + half), (inv @ (dt[:, None] * B)[..., None])[..., 0]


def zoh(A: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Dense zero-order hold: ``A_bar = exp(dt A)``, ``B_bar = A^-1 (exp(dt A) - I) B`` (S4 §2.3 /
    S4D eq. 3, the matrix exponential; ``A`` is invertible: its eigenvalues have ``Re < 0``).
    ``A [H, N, N]``, ``B [H, N]``, ``dt [H]`` -> ``(A_bar [H, N, N], B_bar [H, N])``."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    A_bar = torch.linalg.matrix_exp(dt[:, None, None] * A)
    return A_bar, torch.linalg.solve(A, ((A_bar - eye) @ B[..., None]))[..., 0]


def discretize_dense(A: Tensor, B: Tensor, dt: Tensor, method: str = "bilinear") -> tuple[Tensor, Tensor]:
    """``(A_bar [H, N, N], B_bar [H, N])`` of the dense ``A [H, N, N]`` by ``"bilinear"`` or ``"zoh"``."""
    check_steps("discretize_dense", dt, "H", A.shape[0], None, method)
    return zoh(A, B, dt) if method == "zoh" else bilinear(A, B, dt)


def naive_dplr_kernel(Lambda: Tensor, P: Tensor, Q: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int,
                      method: str = "bilinear") -> Tensor:
    """``K [H, L]``: ``K_l = Re(C A_bar^l B_bar)`` by dense powers, one step at a time (the O(N^2 L)
    reference), ``A = Lambda - P Q^*`` discretised by ``method``."""
    check_dplr_steps("naive_dplr_kernel", Lambda, dt, method)
    A_bar, B_bar = discretize_dense(dense_A(Lambda, P, Q), B, dt, method)
    x, out = B_bar, []
    for _ in range(L):
        out.append((C * x).sum(-1).real)
        x = (A_bar @ x[..., None])[..., 0]
    return torch.stack(out, -1) if out else Lambda.real.new_zeros(Lambda.shape[0], 0)


def power_kernel(A_bar: Tensor, B_bar: Tensor, C: Tensor, L: int) -> Tensor:
    """``K_l = Re(C A_bar^l B_bar)`` for ``l < L`` by blocked dense powers: with ``l = b k + j``
    (``b ~ sqrt(L)``), ``K = Re(U W^T)`` for ``U_k = C A_bar^(b k) [H, L/b, N]`` and
    ``W_j = A_bar^j B_bar [H, b, N]``: 2 sqrt(L) matrix-vector products in sequence instead of L.
    ``A_bar [H, N, N]``, ``B_bar, C [H, N]`` -> ``[H, L]``."""
    if L == 0:
        return C.real.new_zeros(C.shape[0], 0)
    b = max(1, math.isqrt(L - 1) + 1)
    nb = -(-L // b)
    W, x = [], B_bar
    for _ in range(b):  # A_bar^j B_bar
        W.append(x)
        x = (A_bar @ x[..., None])[..., 0]
    A_b = torch.linalg.matrix_power(A_bar, b)
    U, r = [], C
    for _ in range(nb):  # C A_bar^(b k), row vectors
        U.append(r)
        r = (r[..., None, :] @ A_b)[..., 0, :]
    K = torch.stack(U, -2) @ torch.stack(W, -1)  # [H, nb, b]
    return K.real.reshape(K.shape[0], nb * b)[:, :L]


def dplr_kernel(Lambda: Tensor, P: Tensor, Q: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int,
                method: str = "bilinear") -> Tensor:
    """The kernel ``K_l = Re(C A_bar^l B_bar) [H, L]`` of ``A = Lambda - P Q^*``.

    ``method="bilinear"``: in O(N L + L log L) per channel (S4 Algorithm 1):

    1. ``C_tilde = (I - A_bar^L)^T C`` (the truncated generating function's correction);
    2. at ``omega_k = exp(-2 pi i k / L)``: ``g = (2/dt) (1 - omega) / (1 + omega)``;
       Cauchy sums ``k_xy = sum_n x_n y_n / (g - Lambda_n)``;
       ``K_hat = 2 / (1 + omega) [k_CB - k_CP (1 + k_QP)^-1 k_QB]`` (Woodbury);
    3. ``K = Re(ifft(K_hat))``.
    Step 1 uses one dense power ``A_bar^L`` (repeated squaring), O(N^3 log L): fine for the
    N of S4 (64) and done once per kernel.

    ``method="zoh"``: the generating function ``C (I - A_bar^L)(I - omega A_bar)^-1 B_bar`` with
    ``A_bar = exp(dt A)`` has no Cauchy/Woodbury form (the resolvent of ``exp(dt A)`` is not that of
    a DPLR matrix), and diagonalising ``A`` is numerically infeasible for HiPPO (S4 Lemma 3.2:
    exponentially ill-conditioned eigenvectors). So the kernel is the dense ZOH matrices' powers,
    blocked (``power_kernel``): exact, O(N^2 L + N^3 log L) per channel.
    """
    check_dplr_steps("dplr_kernel", Lambda, dt, method)
    if method == "zoh":
        return power_kernel(*zoh(dense_A(Lambda, P, Q), B, dt), C, L)
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

"""S4 (DPLR): HiPPO-LegS is normal plus low rank; the Cauchy + Woodbury kernel == dense powers
(values and every gradient); ZOH: the dense matrices (Van Loan), its blocked-power kernel == the
unrolled recurrence and the S4D ZOH kernel when P = 0; the recurrent step; dt > 0; the s4 layer."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from longctx.ops.s4 import naive_kernel
from longctx.ops.s4.dplr import (
    bilinear,
    dense_A,
    discretize_dense,
    dplr_kernel,
    dplr_step,
    hippo_legs_nplr,
    naive_dplr_kernel,
    zoh,
)
from longctx.ops.s5.init import hippo_legs
from tests.helpers import assert_close

H, N = 2, 8


def params(seed: int = 0):
    Lam, P, B, _ = hippo_legs_nplr(N)
    g = torch.Generator().manual_seed(seed)
    C = torch.complex(torch.randn(H, N, generator=g, dtype=torch.float64), torch.randn(H, N, generator=g, dtype=torch.float64))
    dt = torch.tensor([0.1, 0.03], dtype=torch.float64)
    return Lam.expand(H, N).clone(), P.expand(H, N).clone(), B.expand(H, N).clone(), C, dt


def test_hippo_legs_is_normal_plus_low_rank() -> None:
    Lam, P, _, V = hippo_legs_nplr(N)
    A = V @ (torch.diag(Lam) - P[:, None] * P[None, :].conj()) @ V.conj().T
    assert_close(hippo_legs(N), A.real, rtol=1e-12)
    assert A.imag.abs().max() < 1e-12
    assert torch.allclose(Lam.real, torch.full((N,), -0.5, dtype=torch.float64))


@pytest.mark.parametrize("L", [1, 16, 37])
def test_cauchy_woodbury_kernel_equals_dense_powers(L: int) -> None:
    Lam, P, B, C, dt = params()
    assert_close(naive_dplr_kernel(Lam, P, P, B, C, dt, L), dplr_kernel(Lam, P, P, B, C, dt, L), rtol=1e-10)


def test_kernel_gradients_equal_dense() -> None:
    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in params()]
        K = fn(leaves[0], leaves[1], leaves[1], leaves[2], leaves[3], leaves[4], 20)
        cot = torch.randn(K.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        return torch.autograd.grad((K * cot).sum(), leaves)

    for name, a, b in zip(["Lambda", "P", "B", "C", "dt"], grads(naive_dplr_kernel), grads(dplr_kernel)):
        a, b = (torch.view_as_real(a), torch.view_as_real(b)) if a.is_complex() else (a, b)
        assert_close(a, b, rtol=1e-8, name=f"grad {name}")


def test_recurrent_step_equals_the_kernel() -> None:
    Lam, P, B, C, dt = params()
    A_bar, B_bar = bilinear(dense_A(Lam, P, P), B, dt)
    u = torch.randn(3, 12, H, dtype=torch.float64)
    x, ys = torch.zeros(3, H, N, dtype=torch.complex128), []
    for t in range(12):
        y, x = dplr_step(u[:, t], x, A_bar, B_bar, C)
        ys.append(y)
    K = dplr_kernel(Lam, P, P, B, C, dt, 12)
    ref = torch.stack([sum(K[:, t - s] * u[:, s] for s in range(t + 1)) for t in range(12)], 1)
    assert_close(ref, torch.stack(ys, 1), rtol=1e-10)


def test_zoh_matrices_equal_van_loan() -> None:
    # exp(dt [[A, B], [0, 0]]) = [[exp(dt A), int_0^dt exp(sA) ds B], [0, 1]]: an independent ZOH
    Lam, P, B, _, dt = params()
    A = dense_A(Lam, P, P)
    A_bar, B_bar = zoh(A, B, dt)
    aug = torch.zeros(H, N + 1, N + 1, dtype=A.dtype)
    aug[:, :N, :N], aug[:, :N, N] = A, B
    E = torch.linalg.matrix_exp(dt[:, None, None] * aug)
    assert_close(torch.view_as_real(E[:, :N, :N]), torch.view_as_real(A_bar), rtol=1e-12, name="A_bar")
    assert_close(torch.view_as_real(E[:, :N, N]), torch.view_as_real(B_bar), rtol=1e-12, name="B_bar")


@pytest.mark.parametrize("L", [1, 16, 37])
def test_zoh_kernel_equals_unrolled_recurrence(L: int) -> None:
    Lam, P, B, C, dt = params(2)
    A_bar, B_bar = discretize_dense(dense_A(Lam, P, P), B, dt, "zoh")
    u = torch.randn(2, L, H, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x, ys = torch.zeros(2, H, N, dtype=torch.complex128), []
    for t in range(L):
        y, x = dplr_step(u[:, t], x, A_bar, B_bar, C)
        ys.append(y)
    K = dplr_kernel(Lam, P, P, B, C, dt, L, method="zoh")
    conv = torch.stack([sum(K[:, t - s] * u[:, s] for s in range(t + 1)) for t in range(L)], 1)
    assert_close(torch.stack(ys, 1), conv, rtol=1e-10)
    assert_close(naive_dplr_kernel(Lam, P, P, B, C, dt, L, method="zoh"), K, rtol=1e-10)


def test_zoh_kernel_with_no_low_rank_part_is_s4d_zoh() -> None:
    Lam, P, B, C, dt = params(3)
    K = dplr_kernel(Lam, torch.zeros_like(P), P, B, C, dt, 23, method="zoh")
    assert_close(naive_kernel(Lam, B, C, dt, 23, method="zoh") / 2, K, rtol=1e-10)  # S4D reads 2 Re
    assert not torch.allclose(K, dplr_kernel(Lam, P, P, B, C, dt, 23, method="zoh"))


def test_zoh_kernel_gradients_equal_dense() -> None:
    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in params()]
        K = fn(leaves[0], leaves[1], leaves[1], leaves[2], leaves[3], leaves[4], 20, method="zoh")
        cot = torch.randn(K.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        return torch.autograd.grad((K * cot).sum(), leaves)

    for name, a, b in zip(["Lambda", "P", "B", "C", "dt"], grads(naive_dplr_kernel), grads(dplr_kernel)):
        a, b = (torch.view_as_real(a), torch.view_as_real(b)) if a.is_complex() else (a, b)
        assert torch.isfinite(b).all()
        assert_close(a, b, rtol=1e-8, name=f"grad {name}")


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_non_positive_step_is_refused(method: str) -> None:
    Lam, P, B, C, dt = params()
    for bad in (torch.tensor([0.1, 0.0], dtype=torch.float64), torch.tensor([-0.1, 0.2], dtype=torch.float64)):
        for fn in (dplr_kernel, naive_dplr_kernel):
            with pytest.raises(ValueError, match="step dt must be > 0"):
                fn(Lam, P, P, B, C, bad, 8, method=method)
        with pytest.raises(ValueError, match="step dt must be > 0"):
            discretize_dense(dense_A(Lam, P, P), B, bad, method)
    with pytest.raises(ValueError, match=r"dt must be a real tensor \[H=2\]"):
        dplr_kernel(Lam, P, P, B, C, dt[:1], 8, method=method)
    with pytest.raises(ValueError, match="discretization must be one of"):
        dplr_kernel(Lam, P, P, B, C, dt, 8, method="euler")


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_s4_layer_one_pass_equals_split_equals_decode(method: str) -> None:
    torch.manual_seed(0)
    m = build("s4", d_model=4, n_heads=2, d_state=6, discretization=method, dt_min=0.05, dt_max=0.2).double()
    x = torch.randn(2, 11, 4, dtype=torch.float64)
    ref, _ = m(x)
    state = m.init_state(2)
    outs = []
    for s, e in [(0, 5), (5, 7), (7, 8), (8, 9), (9, 10), (10, 11)]:
        y, state = m(x[:, s:e], state)
        outs.append(y)
    assert_close(ref, torch.cat(outs, 1), rtol=1e-10)


def test_s4_layer_config() -> None:
    with pytest.raises(ValueError, match="discretization must be one of"):
        build("s4", d_model=8, n_heads=2, discretization="euler")
    assert build("s4", d_model=8, n_heads=2).config.discretization == "bilinear"  # the default stays
    m = build("s4", d_model=8, n_heads=2, d_state=4)
    assert m.init_state(2).x.shape == (2, 8, 4, 2)
    z = build("s4", d_model=8, n_heads=2, d_state=4, discretization="zoh")
    y, _ = z(torch.randn(1, 9, 8))
    assert y.shape == (1, 9, 8) and torch.isfinite(y).all()

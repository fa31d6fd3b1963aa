"""S4 (DPLR): HiPPO-LegS is normal plus low rank; the Cauchy + Woodbury kernel == dense powers
(values and every gradient); the recurrent step; the s4 layer's configuration."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from longctx.ops.s4.dplr import (
    bilinear,
    dense_A,
    dplr_kernel,
    dplr_step,
    hippo_legs_nplr,
    naive_dplr_kernel,
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


def test_s4_layer_config() -> None:
    with pytest.raises(ValueError, match="derived for the bilinear"):
        build("s4", d_model=8, n_heads=2, discretization="zoh")
    m = build("s4", d_model=8, n_heads=2, d_state=4)
    assert m.init_state(2).x.shape == (2, 8, 4, 2)

"""S4D: Vandermonde kernel == explicit powers; FFT form == recurrent == the token loop (outputs,
states, every gradient) for ZOH and bilinear; bidirectional; dtypes; errors."""

from __future__ import annotations

import math

import pytest
import torch

from longctx.ops.s4 import (
    chunk_s4d,
    discretize,
    fft_conv,
    naive_kernel,
    naive_s4d,
    s4d_inv,
    s4d_lin,
    s4d_step,
    vandermonde_kernel,
)
from tests.helpers import assert_close

F64, C128 = torch.float64, torch.complex128
B, H, N = 2, 3, 4
METHODS = ["zoh", "bilinear"]


def params(seed: int = 0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    cdtype = C128 if dtype == F64 else torch.complex64

    def cplx(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=F64), torch.randn(*shape, generator=g, dtype=F64))

    A = torch.complex(-torch.rand(H, N, generator=g, dtype=F64) - 0.05, 3 * torch.randn(H, N, generator=g, dtype=F64))
    dt = torch.rand(H, generator=g, dtype=F64) * 0.2 + 0.01
    out = {"A": A, "B": cplx(H, N), "C": cplx(H, N), "dt": dt, "D": torch.randn(H, generator=g, dtype=F64)}
    return {k: v.to(cdtype if v.is_complex() else dtype) for k, v in out.items()}


def u_of(T: int, seed: int = 1, dtype=F64) -> torch.Tensor:
    return torch.randn(B, T, H, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def x0_of(seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(B, H, N, generator=g, dtype=F64), torch.randn(B, H, N, generator=g, dtype=F64))


@pytest.mark.parametrize("method", METHODS)
def test_vandermonde_kernel_equals_powers(method: str) -> None:
    p = params()
    log_A_bar, B_bar = discretize(p["A"], p["B"], p["dt"], method)
    assert_close(naive_kernel(p["A"], p["B"], p["C"], p["dt"], 50, method),
                 vandermonde_kernel(log_A_bar, p["C"] * B_bar, 50), rtol=1e-12)


def test_discretisations_agree_for_small_steps_and_are_stable() -> None:
    p = params()
    for method in METHODS:
        log_A_bar, _ = discretize(p["A"], p["B"], p["dt"], method)
        assert (log_A_bar.real < 0).all()  # |A_bar| < 1 whenever Re A < 0
    small = {**p, "dt": torch.full((H,), 1e-4, dtype=F64)}
    kz = naive_kernel(small["A"], small["B"], small["C"], small["dt"], 20, "zoh")
    kb = naive_kernel(small["A"], small["B"], small["C"], small["dt"], 20, "bilinear")
    assert_close(kz, kb, rtol=1e-6)


def test_fft_conv_is_a_causal_convolution() -> None:
    u, K = u_of(9), torch.randn(H, 9, dtype=F64)
    ref = torch.stack([sum(K[:, t - s] * u[:, s] for s in range(t + 1)) for t in range(9)], dim=1)
    assert_close(ref, fft_conv(u, K), rtol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_equals_naive(method: str, T: int, with_state: bool) -> None:
    p, u = params(), u_of(T)
    x0 = x0_of() if with_state else None
    y, xT = chunk_s4d(u, **p, method=method, initial_state=x0, output_final_state=True)
    y_ref, xT_ref = naive_s4d(u, **p, method=method, initial_state=x0, output_final_state=True)
    assert_close(y_ref, y, rtol=1e-10)
    assert_close(torch.view_as_real(xT_ref), torch.view_as_real(xT), rtol=1e-10, name="state")


@pytest.mark.parametrize("method", METHODS)
def test_recurrent_and_split_equal_one_pass(method: str) -> None:
    p, u = params(), u_of(20)
    y_ref, xT_ref = naive_s4d(u, **p, method=method, output_final_state=True)
    x, ys = None, []
    for t in range(20):
        y_t, x = s4d_step(u[:, t], x, **p, method=method)
        ys.append(y_t)
    assert_close(y_ref, torch.stack(ys, 1), rtol=1e-10)
    assert_close(torch.view_as_real(xT_ref), torch.view_as_real(x), rtol=1e-10)
    y1, x1 = chunk_s4d(u[:, :8], **p, method=method, output_final_state=True)
    y2, x2 = chunk_s4d(u[:, 8:], **p, method=method, initial_state=x1, output_final_state=True)
    assert_close(y_ref, torch.cat([y1, y2], 1), rtol=1e-10)
    assert_close(torch.view_as_real(xT_ref), torch.view_as_real(x2), rtol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_equal_naive(method: str) -> None:
    def run(fn):
        p = {k: v.clone().requires_grad_() for k, v in params().items()}
        u = u_of(13).requires_grad_()
        x0 = x0_of().requires_grad_()
        y, xT = fn(u, **p, method=method, initial_state=x0, output_final_state=True)
        g = torch.Generator().manual_seed(9)
        loss = (y * torch.randn(y.shape, generator=g, dtype=F64)).sum() + (xT.real * 0.3 - xT.imag * 0.7).sum()
        leaves = [u, x0, *p.values()]
        return torch.autograd.grad(loss, leaves)

    for name, a, b in zip(["u", "x0", "A", "B", "C", "dt", "D"], run(naive_s4d), run(chunk_s4d)):
        a, b = (torch.view_as_real(a), torch.view_as_real(b)) if a.is_complex() else (a, b)
        assert_close(a, b, rtol=1e-9, name=f"grad {name}")


def test_bidirectional_equals_naive() -> None:
    p, u = params(), u_of(17)
    Cb = params(seed=5)["C"]
    y, state = chunk_s4d(u, **p, causal=False, C_backward=Cb)
    y_ref, _ = naive_s4d(u, **p, causal=False, C_backward=Cb)
    assert state is None
    assert_close(y_ref, y, rtol=1e-10)
    u2 = u.clone()
    u2[:, 16] += 1.0  # the last token changes the first output (it looks ahead)
    assert (chunk_s4d(u2, **p, causal=False, C_backward=Cb)[0][:, 0] - y[:, 0]).abs().max() > 1e-8


def test_float32_and_long_sequences() -> None:
    y64, _ = chunk_s4d(u_of(300), **params())
    y32, _ = chunk_s4d(u_of(300, dtype=torch.float32), **params(dtype=torch.float32))
    assert_close(y64, y32.double(), rtol=1e-5)
    p = params(dtype=torch.float32)
    y, _ = chunk_s4d(torch.randn(1, 2**16, H), **p)
    assert torch.isfinite(y).all()


def test_initialisations() -> None:
    lin, inv = s4d_lin(2, 4), s4d_inv(2, 4)
    assert torch.allclose(lin[0].imag, math.pi * torch.arange(4, dtype=F64)) and (lin.real == -0.5).all()
    assert torch.allclose(inv[0].imag, 4 / math.pi * (4 / (2 * torch.arange(4, dtype=F64) + 1) - 1))


def test_errors() -> None:
    p, u = params(), u_of(5)
    with pytest.raises(ValueError, match="dt must be > 0"):
        chunk_s4d(u, **{**p, "dt": -p["dt"]})
    with pytest.raises(ValueError, match=r"A must be a complex tensor \[H=3, N\]"):
        chunk_s4d(u, **{**p, "A": p["A"].real})
    with pytest.raises(ValueError, match="u must be a real tensor"):
        chunk_s4d(u[0], **p)
    with pytest.raises(ValueError, match="discretization must be one of"):
        chunk_s4d(u, **p, method="euler")
    with pytest.raises(ValueError, match="needs C_backward"):
        chunk_s4d(u, **p, causal=False)
    with pytest.raises(ValueError, match="no decode state"):
        chunk_s4d(u, **p, causal=False, C_backward=p["C"], output_final_state=True)
    with pytest.raises(ValueError, match=r"initial_state must be \[B=2, H=3, N=4\]"):
        chunk_s4d(u, **p, initial_state=torch.zeros(2, 3, 5, dtype=C128))
    with pytest.raises(ValueError, match="state must be complex"):
        s4d_step(u[:, 0], torch.zeros(2, 3, 4, dtype=F64), **p)

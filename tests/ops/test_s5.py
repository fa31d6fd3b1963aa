"""S5 and the parallel scan: scan == sequential loop (real and complex, with a start state);
S5's scan form == recurrent == the token loop (outputs, states, gradients); HiPPO-N; errors."""

from __future__ import annotations

import pytest
import torch

from longctx.ops.common.scan import chunked_scan, doubling_scan
from longctx.ops.s5 import chunk_s5, hippo_legs, hippo_n_eigenvalues, naive_s5, s5_step
from tests.helpers import assert_close

F64, C128 = torch.float64, torch.complex128
B, H, P = 2, 3, 4


def cplx(*shape, g):
    return torch.complex(torch.randn(*shape, generator=g, dtype=F64), torch.randn(*shape, generator=g, dtype=F64))


def params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Lam = torch.complex(-torch.rand(P, generator=g, dtype=F64) - 0.05, 3 * torch.randn(P, generator=g, dtype=F64))
    return {"Lambda": Lam, "B": cplx(P, H, g=g), "C": cplx(H, P, g=g),
            "dt": torch.rand(P, generator=g, dtype=F64) * 0.2 + 0.01, "D": torch.randn(H, generator=g, dtype=F64)}


def u_of(T: int, seed: int = 1):
    return torch.randn(B, T, H, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("dtype", [F64, C128])
@pytest.mark.parametrize("L, chunk", [(1, 4), (13, 4), (64, 8), (100, 64)])
def test_scan_equals_a_sequential_loop(dtype, L: int, chunk: int) -> None:
    g = torch.Generator().manual_seed(L)
    a = -torch.rand(2, L, 3, generator=g, dtype=F64)
    if dtype == C128:
        a = torch.complex(a, torch.randn(2, L, 3, generator=g, dtype=F64))
    b = torch.randn(2, L, 3, generator=g, dtype=F64).to(dtype)
    h0 = torch.randn(2, 3, generator=g, dtype=F64).to(dtype)
    h, ref = h0, []
    for i in range(L):
        h = torch.exp(a[:, i]) * h + b[:, i]
        ref.append(h)
    ref = torch.stack(ref, 1)
    got = chunked_scan(a, b, h0, chunk)
    view = (lambda t: torch.view_as_real(t)) if dtype == C128 else (lambda t: t)
    assert_close(view(ref), view(got), rtol=1e-12)
    if L > 1:  # the doubling scan alone, from zero
        assert_close(view(chunked_scan(a, b, torch.zeros_like(h0), L)), view(doubling_scan(a, b)[1]), rtol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
@pytest.mark.parametrize("T", [1, 9, 40])
def test_chunk_and_recurrent_equal_naive(method: str, T: int) -> None:
    p, u = params(), u_of(T)
    x0 = cplx(B, P, g=torch.Generator().manual_seed(7))
    ref, s_ref = naive_s5(u, **p, method=method, initial_state=x0, output_final_state=True)
    y, s = chunk_s5(u, **p, method=method, initial_state=x0, output_final_state=True, chunk_size=4)
    assert_close(ref, y, rtol=1e-10)
    assert_close(torch.view_as_real(s_ref), torch.view_as_real(s), rtol=1e-10)
    x, ys = x0, []
    for t in range(T):
        y_t, x = s5_step(u[:, t], x, **p, method=method)
        ys.append(y_t)
    assert_close(ref, torch.stack(ys, 1), rtol=1e-10)
    y1, x1 = chunk_s5(u[:, :T // 2], **p, method=method, initial_state=x0, output_final_state=True, chunk_size=4)
    y2, _ = chunk_s5(u[:, T // 2:], **p, method=method, initial_state=x1, output_final_state=True, chunk_size=4)
    assert_close(ref, torch.cat([y1, y2], 1), rtol=1e-10)


def test_gradients_equal_naive() -> None:
    def grads(fn, **kw):
        p = {k: v.clone().requires_grad_() for k, v in params().items()}
        u = u_of(11).requires_grad_()
        x0 = cplx(B, P, g=torch.Generator().manual_seed(7)).requires_grad_()
        y, xT = fn(u, **p, initial_state=x0, output_final_state=True, **kw)
        g = torch.Generator().manual_seed(2)
        loss = (y * torch.randn(y.shape, generator=g, dtype=F64)).sum() + (xT.real - 0.5 * xT.imag).sum()
        return torch.autograd.grad(loss, [u, x0, *p.values()])

    for name, a, b in zip(["u", "x0", "Lambda", "B", "C", "dt", "D"], grads(naive_s5), grads(chunk_s5, chunk_size=4)):
        a, b = (torch.view_as_real(a), torch.view_as_real(b)) if a.is_complex() else (a, b)
        assert_close(a, b, rtol=1e-9, name=f"grad {name}")


def test_bidirectional_and_long_float32() -> None:
    p, u = params(), u_of(21)
    Cb = params(seed=3)["C"]
    y, _ = chunk_s5(u, **p, causal=False, C_backward=Cb, chunk_size=4)
    assert_close(naive_s5(u, **p, causal=False, C_backward=Cb)[0], y, rtol=1e-10)
    p32 = {k: (v.to(torch.complex64) if v.is_complex() else v.float()) for k, v in p.items()}
    y32, _ = chunk_s5(torch.randn(1, 2**16, H), **p32)
    assert torch.isfinite(y32).all()


def test_hippo_n() -> None:
    A = hippo_legs(4)
    assert A[0, 0] == -1 and A[2, 1] == -(5 * 3) ** 0.5 and A[1, 2] == 0
    lam = hippo_n_eigenvalues(16)
    assert lam.shape == (8,) and torch.allclose(lam.real, torch.full((8,), -0.5, dtype=F64))


def test_errors() -> None:
    p, u = params(), u_of(5)
    with pytest.raises(ValueError, match="the step dt must be > 0"):
        chunk_s5(u, **{**p, "dt": -p["dt"]})
    with pytest.raises(ValueError, match=r"B must be a complex tensor \[4, 3\]"):
        chunk_s5(u, **{**p, "B": p["B"][:, :2]})
    with pytest.raises(ValueError, match="needs C_backward"):
        chunk_s5(u, **p, causal=False)
    with pytest.raises(ValueError, match=r"initial_state must be \[B=2, P=4\]"):
        chunk_s5(u, **p, initial_state=torch.zeros(2, 3, dtype=C128))

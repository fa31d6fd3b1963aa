"""MEGA's EMA: convolution (FFT) form == recurrence == the token loop (outputs, states, every
gradient); bidirectional; errors."""

from __future__ import annotations

import pytest
import torch

from longctx.ops.ema import chunk_ema, ema_step, naive_ema
from tests.helpers import assert_close

F64 = torch.float64
B, D, h = 2, 3, 4


def params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"alpha": torch.rand(D, h, generator=g, dtype=F64) * 0.9 + 0.05,
            "delta": torch.rand(D, h, generator=g, dtype=F64) * 0.9 + 0.05,
            "beta": torch.randn(D, h, generator=g, dtype=F64), "eta": torch.randn(D, h, generator=g, dtype=F64)}


def x_of(T: int, seed: int = 1):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("T", [1, 9, 70])
def test_conv_and_recurrent_equal_naive(T: int) -> None:
    p, x = params(), x_of(T)
    s0 = torch.randn(B, D, h, dtype=F64)
    ref, s_ref = naive_ema(x, **p, initial_state=s0, output_final_state=True)
    y, s = chunk_ema(x, **p, initial_state=s0, output_final_state=True)
    assert_close(ref, y, rtol=1e-10)
    assert_close(s_ref, s, rtol=1e-10)
    st, ys = s0, []
    for t in range(T):
        y_t, st = ema_step(x[:, t], st, **p)
        ys.append(y_t)
    assert_close(ref, torch.stack(ys, 1), rtol=1e-10)
    y1, s1 = chunk_ema(x[:, :T // 2], **p, initial_state=s0, output_final_state=True)
    y2, _ = chunk_ema(x[:, T // 2:], **p, initial_state=s1)
    assert_close(ref, torch.cat([y1, y2], 1), rtol=1e-10)


def test_gradients_equal_naive() -> None:
    def grads(fn):
        p = {k: v.clone().requires_grad_() for k, v in params().items()}
        x = x_of(17).requires_grad_()
        s0 = torch.randn(B, D, h, dtype=F64, generator=torch.Generator().manual_seed(5)).requires_grad_()
        y, s = fn(x, **p, initial_state=s0, output_final_state=True)
        loss = (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=F64)).sum() + s.sum()
        return torch.autograd.grad(loss, [x, s0, *p.values()])

    for name, a, b in zip(["x", "s0", "alpha", "delta", "beta", "eta"], grads(naive_ema), grads(chunk_ema)):
        assert_close(a, b, rtol=1e-9, name=f"grad {name}")


def test_bidirectional_and_float32() -> None:
    p, x = params(), x_of(25)
    eb = params(seed=4)["eta"]
    y, state = chunk_ema(x, **p, causal=False, eta_backward=eb)
    assert state is None
    assert_close(naive_ema(x, **p, causal=False, eta_backward=eb)[0], y, rtol=1e-10)
    y32, _ = chunk_ema(x.float(), **{k: v.float() for k, v in p.items()})
    assert_close(chunk_ema(x, **p)[0], y32.double(), rtol=1e-5)


def test_errors() -> None:
    p, x = params(), x_of(5)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        chunk_ema(x, **{**p, "alpha": p["alpha"] + 1})
    with pytest.raises(ValueError, match=r"eta must be \[D=3, h=4\]"):
        chunk_ema(x, **{**p, "eta": p["eta"][:, :2]})
    with pytest.raises(ValueError, match="needs eta_backward"):
        chunk_ema(x, **p, causal=False)

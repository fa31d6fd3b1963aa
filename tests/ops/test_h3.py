"""H3: FFT form == recurrent == the token loop (outputs, states, gradients); the shift SSM is a
causal FIR; errors."""

from __future__ import annotations

import pytest
import torch

from longctx.ops.h3 import chunk_h3, h3_step, naive_h3, shift_conv
from tests.helpers import assert_close

F64, C128 = torch.float64, torch.complex128
B, H, DK, DV, N, NS = 2, 2, 3, 4, 4, 5


def inputs(T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    C = H * DK

    def r(*s):
        return torch.randn(*s, generator=g, dtype=F64)

    qkv = [r(B, T, H, DK), r(B, T, H, DK), r(B, T, H, DV)]
    A = torch.complex(-torch.rand(C, NS, generator=g, dtype=F64) - 0.1, r(C, NS))
    ssm = {"A": A, "Bs": torch.complex(r(C, NS), r(C, NS)), "C": torch.complex(r(C, NS), r(C, NS)),
           "dt": torch.rand(C, generator=g, dtype=F64) * 0.2 + 0.01}
    return qkv, r(C, N), ssm


def test_shift_conv_is_a_causal_fir() -> None:
    x, f = torch.randn(1, 6, 2, dtype=F64), torch.randn(2, 3, dtype=F64)
    y, hist = shift_conv(x, f)
    ref = torch.stack([sum(f[:, j] * x[:, t - j] for j in range(3) if t - j >= 0) for t in range(6)], 1)
    assert_close(ref, y, rtol=1e-12)
    assert torch.equal(hist, x[:, -2:])


@pytest.mark.parametrize("T", [1, 6, 19])
def test_chunk_and_recurrent_equal_naive(T: int) -> None:
    (q, k, v), f, ssm = inputs(T)
    ref = naive_h3(q, k, v, f, **ssm)
    out, state = chunk_h3(q, k, v, f, **ssm, output_final_state=True)
    assert_close(ref, out, rtol=1e-10)
    s = (torch.zeros(B, N - 1, H * DK, dtype=F64), torch.zeros(B, H * DK, NS, DV, dtype=C128))
    outs = []
    for t in range(T):
        o, s = h3_step(q[:, t], k[:, t], v[:, t], f, **ssm, state=s)
        outs.append(o)
    assert_close(ref, torch.stack(outs, 1), rtol=1e-10)
    assert_close(torch.view_as_real(state[1]), torch.view_as_real(s[1]), rtol=1e-10, name="ssm state")
    assert torch.equal(state[0], s[0])


def test_state_carried_across_a_split_and_gradients() -> None:
    (q, k, v), f, ssm = inputs(15)
    ref = naive_h3(q, k, v, f, **ssm)
    o1, s1 = chunk_h3(q[:, :6], k[:, :6], v[:, :6], f, **ssm, output_final_state=True)
    o2, _ = chunk_h3(q[:, 6:], k[:, 6:], v[:, 6:], f, **ssm, initial_state=s1)
    assert_close(ref, torch.cat([o1, o2], 1), rtol=1e-10)

    def grads(fn):
        (q_, k_, v_), f_, ssm_ = inputs(9)
        leaves = [q_, k_, v_, f_, *ssm_.values()]
        for t in leaves:
            t.requires_grad_()
        out = fn(q_, k_, v_, f_, *leaves[4:])
        out = out[0] if isinstance(out, tuple) else out
        cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
        return torch.autograd.grad((out * cot).sum(), leaves)

    for name, a, b in zip(["q", "k", "v", "shift", "A", "B", "C", "dt"], grads(naive_h3), grads(chunk_h3)):
        a, b = (torch.view_as_real(a), torch.view_as_real(b)) if a.is_complex() else (a, b)
        assert_close(a, b, rtol=1e-9, name=f"grad {name}")


def test_errors() -> None:
    (q, k, v), f, ssm = inputs(4)
    with pytest.raises(ValueError, match=r"shift_kernel must be \[H\*Dk=6, N\]"):
        chunk_h3(q, k, v, f[:3], **ssm)
    with pytest.raises(ValueError, match="q and k must be"):
        chunk_h3(q[:, :2], k, v, f, **ssm)
    with pytest.raises(ValueError, match="dt must be > 0"):
        chunk_h3(q, k, v, f, **{**ssm, "dt": -ssm["dt"]})

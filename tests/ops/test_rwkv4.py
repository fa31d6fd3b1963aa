"""RWKV-4 WKV: chunk == recurrent == naive (outputs, states, every gradient incl. the initial
state), split-with-state == one pass, float32 / bfloat16 tolerances, stability for large keys
and at T = 2^16, agreement with transformers' RWKV-4 port, argument errors."""

from __future__ import annotations

import pytest
import torch

from longctx.ops.rwkv4 import chunk_wkv, naive_wkv, recurrent_wkv, wkv_step
from tests.helpers import assert_close

F64 = torch.float64
B, C = 2, 5


def inputs(T: int, seed: int = 0, dtype=F64, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, T, C, generator=g, dtype=F64) * scale
    v = torch.randn(B, T, C, generator=g, dtype=F64)
    w = torch.rand(C, generator=g, dtype=F64) + 0.05
    u = torch.randn(C, generator=g, dtype=F64)
    return [t.to(dtype) for t in (k, v, w, u)]


def scaled(state):
    """The sums the state stands for: (a e^p, b e^p)."""
    a, b, p = state
    return torch.stack([a * torch.exp(p), b * torch.exp(p)])


@pytest.mark.parametrize("T, chunk", [(1, 4), (7, 4), (37, 8), (64, 16)])
def test_chunk_and_recurrent_equal_naive(T: int, chunk: int) -> None:
    k, v, w, u = inputs(T)
    ref, s_ref = naive_wkv(k, v, w, u, output_final_state=True)
    for out, s in (chunk_wkv(k, v, w, u, output_final_state=True, chunk_size=chunk),
                   recurrent_wkv(k, v, w, u, output_final_state=True)):
        assert_close(ref, out, rtol=1e-12)
        assert_close(scaled(s_ref), scaled(s), rtol=1e-12, name="state")


def test_state_carried_across_a_split() -> None:
    k, v, w, u = inputs(30)
    ref, s_ref = naive_wkv(k, v, w, u, output_final_state=True)
    o1, s1 = chunk_wkv(k[:, :11], v[:, :11], w, u, output_final_state=True, chunk_size=4)
    o2, s2 = chunk_wkv(k[:, 11:], v[:, 11:], w, u, initial_state=s1, output_final_state=True,
                       chunk_size=4)
    assert_close(ref, torch.cat([o1, o2], 1), rtol=1e-12)
    assert_close(scaled(s_ref), scaled(s2), rtol=1e-12)
    o3, _ = naive_wkv(k[:, 11:], v[:, 11:], w, u, initial_state=s1)  # naive takes a state too
    assert_close(o2, o3, rtol=1e-12)
    out, _ = wkv_step(k[:, 11], v[:, 11], w, u, s1)
    assert_close(o2[:, 0], out, rtol=1e-12)


def a_state(T: int = 6, seed: int = 9):
    """A state (a, b, p) after T random tokens (p its running max exponent)."""
    k, v, w, u = inputs(T, seed)
    return recurrent_wkv(k, v, w, u, output_final_state=True)[1]


def test_gradients_equal_naive() -> None:
    """k, v, w, u and the initial state (a, b, p), through the output and the final sums."""
    state = a_state()

    def grads(fn, **kw):
        leaves = [t.clone().requires_grad_() for t in (*inputs(19), *state)]
        out, s = fn(*leaves[:4], initial_state=tuple(leaves[4:]), output_final_state=True, **kw)
        g = torch.Generator().manual_seed(3)
        sums = scaled(s)
        loss = ((out * torch.randn(out.shape, generator=g, dtype=F64)).sum()
                + (sums * torch.randn(sums.shape, generator=g, dtype=F64)).sum() * 0.3)
        return torch.autograd.grad(loss, leaves)

    ref = grads(naive_wkv)
    for fn, kw in ((chunk_wkv, {"chunk_size": 4}), (recurrent_wkv, {})):
        for name, a, b in zip(("k", "v", "w", "u", "a", "b", "p"), ref, grads(fn, **kw)):
            assert_close(a, b, rtol=1e-9, name=f"{fn.__name__} grad {name}")


@pytest.mark.parametrize("dtype, rtol, state_rtol",
                         [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1e-2, 5e-2)])
def test_low_precision_agrees_with_float64(dtype: torch.dtype, rtol: float,
                                           state_rtol: float) -> None:
    """float32 within 1e-5; bfloat16 (inputs rounded to 8 bits, computed in float32) within 1e-2,
    its state sums within 5e-2: ``e^k`` turns the rounding of keys of size ~10 into ~2% (the
    chunked and the recurrent form give the same numbers). The state comes back in float32."""
    k, v, w, u = inputs(45, seed=4, scale=5.0)
    state = a_state()
    ref, s_ref = naive_wkv(k, v, w, u, initial_state=state, output_final_state=True)
    low = [t.to(dtype) for t in (k, v, w, u)]
    low_state = tuple(t.to(dtype) for t in state)
    for fn, kw in ((chunk_wkv, {"chunk_size": 16}), (recurrent_wkv, {})):
        out, s = fn(*low, initial_state=low_state, output_final_state=True, **kw)
        assert out.dtype == dtype and s[0].dtype == torch.float32
        assert_close(ref, out, rtol, f"{fn.__name__} {dtype}")
        assert_close(scaled(s_ref), scaled(s).double(), state_rtol, f"{fn.__name__} {dtype} state")


def test_naive_agrees_with_transformers_rwkv4() -> None:
    """HF transformers' RWKV-4 port (its CPU WKV, float32 inside): same operator and state."""
    modeling = pytest.importorskip("transformers.models.rwkv.modeling_rwkv")
    k, v, w, u = inputs(23, seed=6)
    ref, s_ref = naive_wkv(k, v, w, u, output_final_state=True)
    # transformers takes time_decay = log w and keeps (num, den, max) like our (a, b, p)
    out, state = modeling.rwkv_linear_attention_cpu(torch.log(w), u, k, v, return_state=True)
    assert_close(ref, out, rtol=1e-6, name="transformers wkv")
    assert_close(scaled(s_ref), scaled(tuple(state)).double(), rtol=1e-6, name="transformers state")


def test_float32_is_stable_for_large_keys_and_long_sequences() -> None:
    k, v, w, u = inputs(300, scale=40.0)  # e^{k} overflows float32 without the running max
    ref, _ = chunk_wkv(k, v, w, u, chunk_size=32)
    out, _ = chunk_wkv(*[t.float() for t in (k, v, w, u)], chunk_size=32)
    assert torch.isfinite(out).all()
    assert_close(ref, out.double(), rtol=1e-5)
    rec, _ = recurrent_wkv(*[t.float() for t in (k[:, :50], v[:, :50], w, u)])
    assert torch.isfinite(rec).all()
    long = torch.randn(1, 2**16, 4) * 10
    o, _ = chunk_wkv(long, long, torch.rand(4) + 0.01, torch.randn(4), chunk_size=64)
    assert torch.isfinite(o).all()


def test_errors() -> None:
    k, v, w, u = inputs(4)
    with pytest.raises(ValueError, match="the decay w must be > 0"):
        chunk_wkv(k, v, -w, u)
    with pytest.raises(ValueError, match=r"k must be \[B, T, C\], got \[2, 4, 5, 1\]"):
        naive_wkv(k[..., None], v, w, u)
    with pytest.raises(TypeError, match=r"v must have k's dtype torch.float64, got torch.float32"):
        chunk_wkv(k, v.float(), w, u)
    with pytest.raises(ValueError, match=r"k_t for one decode step must be \[B, C\]"):
        wkv_step(k, v[:, 0], w, u, None)
    with pytest.raises(ValueError, match=r"v must have k's shape"):
        chunk_wkv(k, v[:, :2], w, u)
    with pytest.raises(ValueError, match=r"u must be \[C=5\]"):
        chunk_wkv(k, v, w, u[:3])
    with pytest.raises(ValueError, match=r"state must be a tuple \(a, b, p\)"):
        chunk_wkv(k, v, w, u, initial_state=(k[:, 0], k[:, 0]))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_wkv(k, v, w, u, chunk_size=0)

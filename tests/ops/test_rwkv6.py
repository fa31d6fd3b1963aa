"""RWKV-6 WKV: chunk == recurrent == naive (outputs, final states, every gradient incl. w, u and
the initial state), split-with-state == one pass, float32 / bfloat16 tolerances, stability at
T = 2^16 in float32 with large keys and extreme decays, and the argument errors."""

from __future__ import annotations

import pytest
import torch

from longctx.ops.rwkv6 import chunk_rwkv6, naive_rwkv6, recurrent_rwkv6, rwkv6_step
from tests.helpers import assert_close, loss_from, random_like_outputs

F64 = torch.float64
B, H, K, V = 2, 3, 5, 4
RTOL = 1e-9


def inputs(T: int, seed: int = 0, dtype: torch.dtype = F64, key_scale: float = 1.0,
           d_range: tuple[float, float] = (-3.0, 1.0)) -> list[torch.Tensor]:
    """r, k, v, log-decay w = -exp(d) with d uniform in ``d_range``, u, initial state S0."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, H, K, generator=g, dtype=F64)
    k = torch.randn(B, T, H, K, generator=g, dtype=F64) * key_scale
    v = torch.randn(B, T, H, V, generator=g, dtype=F64)
    lo, hi = d_range
    w = -torch.exp(lo + (hi - lo) * torch.rand(B, T, H, K, generator=g, dtype=F64))
    u = torch.randn(H, K, generator=g, dtype=F64)
    S0 = torch.randn(B, H, K, V, generator=g, dtype=F64)
    return [t.to(dtype) for t in (r, k, v, w, u, S0)]


def test_the_paper_indexing_on_scalars() -> None:
    """K = V = 1 by hand: o_0 = r0 u k0 v0; o_1 = r1 (k0 v0 + u k1 v1);
    o_2 = r2 (w1 k0 v0 + k1 v1 + u k2 v2): the decay w_t acts on the state after o_t is read."""
    r, k, v = (torch.tensor([a, b, c], dtype=F64).view(1, 3, 1, 1)
               for a, b, c in ((1.0, 2.0, 3.0), (0.5, -1.0, 2.0), (4.0, 1.0, -2.0)))
    dec = torch.tensor([0.9, 0.6, 0.3], dtype=F64)
    w, u = dec.log().view(1, 3, 1, 1), torch.tensor([[1.5]], dtype=F64)
    k0v0, k1v1, k2v2 = 0.5 * 4.0, -1.0 * 1.0, 2.0 * -2.0
    want = torch.tensor([1.0 * 1.5 * k0v0, 2.0 * (k0v0 + 1.5 * k1v1),
                         3.0 * (0.6 * k0v0 + k1v1 + 1.5 * k2v2)], dtype=F64).view(1, 3, 1, 1)
    state = 0.3 * (0.6 * k0v0 + k1v1) + k2v2
    for fn, kw in ((naive_rwkv6, {}), (recurrent_rwkv6, {}), (chunk_rwkv6, {"chunk_size": 2})):
        o, S = fn(r, k, v, w, u, output_final_state=True, **kw)
        assert torch.allclose(o, want, rtol=1e-14), fn.__name__
        assert torch.allclose(S.flatten(), torch.tensor([state], dtype=F64), rtol=1e-14)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T, chunk", [(1, 4), (7, 4), (37, 8), (64, 16), (50, 48), (33, 20)])
def test_chunk_and_recurrent_equal_naive(T: int, chunk: int, with_state: bool) -> None:
    r, k, v, w, u, S0 = inputs(T)
    S0 = S0 if with_state else None
    ref, s_ref = naive_rwkv6(r, k, v, w, u, initial_state=S0, output_final_state=True)
    for out, s in (chunk_rwkv6(r, k, v, w, u, initial_state=S0, output_final_state=True,
                               chunk_size=chunk),
                   recurrent_rwkv6(r, k, v, w, u, initial_state=S0, output_final_state=True)):
        assert_close(ref, out, RTOL)
        assert_close(s_ref, s, RTOL, "final state")


def test_scale_multiplies_r() -> None:
    r, k, v, w, u, _ = inputs(9)
    ref, _ = naive_rwkv6(r * 0.25, k, v, w, u)
    out, _ = chunk_rwkv6(r, k, v, w, u, scale=0.25, chunk_size=4)
    assert_close(ref, out, RTOL)


def test_state_carried_across_a_split_equals_one_pass() -> None:
    r, k, v, w, u, S0 = inputs(30)
    ref, s_ref = naive_rwkv6(r, k, v, w, u, initial_state=S0, output_final_state=True)
    cut = 11
    first = [x[:, :cut] for x in (r, k, v, w)]
    second = [x[:, cut:] for x in (r, k, v, w)]
    for fn, kw in ((chunk_rwkv6, {"chunk_size": 4}), (naive_rwkv6, {}), (recurrent_rwkv6, {})):
        o1, s1 = fn(*first, u, initial_state=S0, output_final_state=True, **kw)
        o2, s2 = fn(*second, u, initial_state=s1, output_final_state=True, **kw)
        assert_close(ref, torch.cat([o1, o2], 1), RTOL, fn.__name__)
        assert_close(s_ref, s2, RTOL, f"{fn.__name__} state")
    # decode: one step at a time from the split state
    _, s = chunk_rwkv6(*first, u, initial_state=S0, output_final_state=True, chunk_size=4)
    for t in range(cut, 30):
        o_t, s = rwkv6_step(r[:, t], k[:, t], v[:, t], w[:, t], u, s)
        assert_close(ref[:, t], o_t, RTOL, f"step {t}")
    assert_close(s_ref, s, RTOL, "state after the steps")


def test_step_without_state_starts_from_zeros() -> None:
    r, k, v, w, u, _ = inputs(1)
    ref, s_ref = naive_rwkv6(r, k, v, w, u, output_final_state=True)
    o, s = rwkv6_step(r[:, 0], k[:, 0], v[:, 0], w[:, 0], u, None)
    assert_close(ref[:, 0], o, RTOL)
    assert_close(s_ref, s, RTOL)


def test_empty_sequence_passes_the_state_through() -> None:
    r, k, v, w, u, S0 = inputs(0)
    for fn in (naive_rwkv6, chunk_rwkv6, recurrent_rwkv6):
        o, s = fn(r, k, v, w, u, initial_state=S0, output_final_state=True)
        assert o.shape == (B, 0, H, V) and torch.equal(s, S0), fn.__name__


@pytest.mark.parametrize("T, chunk", [(19, 4), (40, 32)])
def test_gradients_equal_naive(T: int, chunk: int) -> None:
    """Every gradient (r, k, v, the log-decay w, the bonus u, the initial state), through the
    output and the final state."""
    leaves = inputs(T, seed=3)

    def grads(fn, **kw):
        xs = [t.clone().requires_grad_() for t in leaves]
        o, s = fn(*xs[:5], initial_state=xs[5], output_final_state=True, **kw)
        loss = loss_from([o, s], random_like_outputs([o, s], seed=7))
        return torch.autograd.grad(loss, xs)

    ref = grads(naive_rwkv6)
    for fn, kw in ((chunk_rwkv6, {"chunk_size": chunk}), (recurrent_rwkv6, {})):
        for name, a, b in zip(("r", "k", "v", "w", "u", "initial_state"), ref, grads(fn, **kw)):
            assert_close(a, b, RTOL, f"{fn.__name__} grad {name}")


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_low_precision_agrees_with_float64(dtype: torch.dtype, rtol: float) -> None:
    """float32 within 1e-5, bfloat16 (inputs rounded to 8 bits, computed in float32) within 3e-2
    relative RMS of the float64 reference; the state comes back in float32."""
    xs = inputs(70, seed=5)
    ref, s_ref = naive_rwkv6(*xs[:5], initial_state=xs[5], output_final_state=True)
    low = [t.to(dtype) for t in xs]
    for fn, kw in ((chunk_rwkv6, {"chunk_size": 16}), (recurrent_rwkv6, {})):
        o, s = fn(*low[:5], initial_state=low[5], output_final_state=True, **kw)
        assert o.dtype == dtype and s.dtype == torch.float32
        assert_close(ref, o, rtol, f"{fn.__name__} {dtype}")
        assert_close(s_ref, s, rtol, f"{fn.__name__} {dtype} state")


def test_float32_is_stable_for_extreme_decays_and_large_keys() -> None:
    """Decays from exp(-exp(-8)) ~ 1 - 3e-4 to exp(-exp(6)) ~ e^-403 per step and keys of size
    ~30: every exponent is a direct sum of log-decays (no exp of a positive number, no difference
    of cumulative sums), so float32 stays within 1e-6 of float64, like the token loop."""
    xs = inputs(200, seed=11, key_scale=30.0, d_range=(-8.0, 6.0))
    ref, s_ref = naive_rwkv6(*xs[:5], initial_state=xs[5], output_final_state=True)
    out, s = chunk_rwkv6(*[t.float() for t in xs[:5]], initial_state=xs[5].float(),
                         output_final_state=True, chunk_size=64)
    assert_close(ref, out, 1e-6)
    assert_close(s_ref, s, 1e-6, "final state")


def test_no_nan_or_inf_at_T_2_16_in_float32() -> None:
    g = torch.Generator().manual_seed(0)
    T = 2**16
    r, k = (torch.randn(1, T, 2, 4, generator=g) * s for s in (1.0, 30.0))
    v = torch.randn(1, T, 2, 4, generator=g)
    w = -torch.exp(torch.rand(1, T, 2, 4, generator=g) * 14 - 8)  # d in [-8, 6]
    u = torch.randn(2, 4, generator=g)
    o, s = chunk_rwkv6(r, k, v, w, u, output_final_state=True, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    # the float64 chunked form (== naive above) over the whole length
    ref, s_ref = chunk_rwkv6(*(x.double() for x in (r, k, v, w, u)), output_final_state=True)
    assert_close(ref, o, 1e-6)
    assert_close(s_ref, s, 1e-6, "final state")


def test_errors() -> None:
    r, k, v, w, u, S0 = inputs(4)
    with pytest.raises(ValueError, match=r"w is the log of the decay.*must be <= 0"):
        chunk_rwkv6(r, k, v, w.exp(), u)
    with pytest.raises(ValueError, match=r"r must be \[B, T, H, K\]"):
        naive_rwkv6(r[0], k, v, w, u)
    with pytest.raises(ValueError, match=r"k must have shape \[B, T, H, K\] like r = \[2, 4, 3, 5"):
        chunk_rwkv6(r, k[..., :2], v, w, u)
    with pytest.raises(ValueError, match=r"v must be \[B=2, T=4, H=3, V\]"):
        recurrent_rwkv6(r, k, v[:, :2], w, u)
    with pytest.raises(ValueError, match=r"w must have shape"):
        chunk_rwkv6(r, k, v, w[:, :, :1], u)
    with pytest.raises(ValueError, match=r"u must have shape \[H, K\] = \[3, 5\]"):
        chunk_rwkv6(r, k, v, w, u[0])
    with pytest.raises(ValueError, match=r"initial_state must have shape \[B, H, K, V\]"):
        chunk_rwkv6(r, k, v, w, u, initial_state=S0[..., :2])
    with pytest.raises(TypeError, match=r"k must have r's dtype torch.float64"):
        chunk_rwkv6(r, k.float(), v, w, u)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_rwkv6(r, k, v, w, u, chunk_size=0)
    with pytest.raises(ValueError, match=r"r_t for one decode step must be \[B, H, K\]"):
        rwkv6_step(r, k[:, 0], v[:, 0], w[:, 0], u, None)
    with pytest.raises(ValueError, match=r"w is the log of the decay"):
        rwkv6_step(r[:, 0], k[:, 0], v[:, 0], -w[:, 0], u, None)

"""retention: chunk == recurrent == naive (outputs, states, gradients), dtypes, errors."""

from __future__ import annotations

import pytest
import torch

from longctx.ops.linear_attention import naive_linear_attention
from longctx.ops.retention import (
    chunk_retention,
    naive_retention,
    recurrent_retention,
    retention_step,
    retnet_log_decay,
)
from tests.helpers import assert_close, grads_of, loss_from, random_like_outputs, random_qkv

F64 = torch.float64
B, H, DK, DV = 2, 3, 8, 5
SHAPES = [(1, 16), (37, 16), (63, 64), (130, 16), (130, 64)]  # (T, chunk_size)
DECAYS = ["retnet", "random", "zero"]


def make_qkv(T, dtype=F64, b=B, h=H, dk=DK, dv=DV):
    return random_qkv(b, T, h, dk, dv, dtype)


def make_decay(kind, h=H, dtype=F64):
    if kind == "retnet":
        return None
    if kind == "zero":  # gamma = 1: plain (unnormalised, identity-map) linear attention
        return torch.zeros(h, dtype=dtype)
    return torch.log(torch.rand(h, dtype=dtype) * 0.9 + 0.05)  # gamma in [0.05, 0.95]


def make_state(dtype=F64, b=B, h=H, dk=DK, dv=DV):
    return torch.randn(b, h, dk, dv, dtype=dtype)


def test_retnet_log_decay_values():
    ld = retnet_log_decay(4, dtype=F64)
    assert ld.shape == (4,)
    expected = torch.tensor([1 - 2**-5, 1 - 2**-6, 1 - 2**-7, 1 - 2**-8], dtype=F64)
    assert_close(expected, ld.exp(), 1e-15)
    assert retnet_log_decay(32).dtype == torch.float32 and (retnet_log_decay(32) < 0).all()


# ---- invariant 1: chunk == naive --------------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T,chunk_size", SHAPES)
@pytest.mark.parametrize("decay", DECAYS)
def test_chunk_matches_naive(decay, T, chunk_size, with_state):
    q, k, v = make_qkv(T)
    log_decay, state = make_decay(decay), (make_state() if with_state else None)
    kw = {"log_decay": log_decay, "initial_state": state, "output_final_state": True}
    o_ref, s_ref = naive_retention(q, k, v, **kw)
    o, s = chunk_retention(q, k, v, chunk_size=chunk_size, **kw)
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")
    assert s.shape == (B, H, DK, DV)


def test_no_final_state_unless_asked():
    q, k, v = make_qkv(10)
    for fn in (naive_retention, chunk_retention, recurrent_retention):
        assert fn(q, k, v)[1] is None


def test_empty_sequence_keeps_state():
    q, k, v = make_qkv(0)
    state = make_state()
    for fn in (naive_retention, chunk_retention, recurrent_retention):
        o, s = fn(q, k, v, initial_state=state, output_final_state=True)
        assert o.shape == (B, 0, H, DV)
        assert_close(state, s, 0.0, "final_state")


def test_zero_decay_is_linear_attention():
    q, k, v = make_qkv(37)
    o_ref, _ = naive_linear_attention(q, k, v, feature_map="identity")
    o, _ = chunk_retention(q, k, v, log_decay=torch.zeros(H, dtype=F64), chunk_size=16)
    assert_close(o_ref, o, 1e-12)


def test_heads_decay_independently():
    # a head with a tiny gamma only sees the current token: o_t = (scale q_t . k_t) v_t
    q, k, v = make_qkv(20)
    log_decay = torch.tensor([-60.0, 0.0, -0.1], dtype=F64)
    o, _ = chunk_retention(q, k, v, log_decay=log_decay, scale=1.0, chunk_size=8)
    expected = (q[:, :, 0] * k[:, :, 0]).sum(-1, keepdim=True) * v[:, :, 0]
    assert_close(expected, o[:, :, 0], 1e-12)


# ---- invariant 2: recurrent == naive; carrying the state across a split == one pass -----------


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("decay", DECAYS)
def test_recurrent_matches_naive(decay, T):
    q, k, v = make_qkv(T)
    kw = {"log_decay": make_decay(decay), "initial_state": make_state(), "output_final_state": True}
    o_ref, s_ref = naive_retention(q, k, v, **kw)
    o, s = recurrent_retention(q, k, v, **kw)
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")


@pytest.mark.parametrize("decay", DECAYS)
def test_step_by_step_decoding(decay):
    q, k, v = make_qkv(9)
    log_decay = make_decay(decay)
    o_ref, s_ref = naive_retention(q, k, v, log_decay=log_decay, output_final_state=True)
    state, outs = None, []
    for t in range(q.shape[1]):
        o_t, state = retention_step(q[:, t], k[:, t], v[:, t], state, log_decay=log_decay)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), 1e-9)
    assert_close(s_ref, state, 1e-9, "final_state")


@pytest.mark.parametrize("split", [1, 20, 50])
@pytest.mark.parametrize("decay", DECAYS)
def test_split_carry_state(decay, split):
    q, k, v = make_qkv(63)
    kw = {"log_decay": make_decay(decay), "output_final_state": True}
    o_ref, s_ref = naive_retention(q, k, v, **kw)
    for fn, extra in ((chunk_retention, {"chunk_size": 16}), (recurrent_retention, {})):
        o1, s1 = fn(q[:, :split], k[:, :split], v[:, :split], **kw, **extra)
        o2, s2 = fn(q[:, split:], k[:, split:], v[:, split:], initial_state=s1, **kw, **extra)
        assert_close(o_ref, torch.cat([o1, o2], 1), 1e-9, f"{fn.__name__} output")
        assert_close(s_ref, s2, 1e-9, f"{fn.__name__} final_state")


# ---- invariant 3: gradients of chunk == gradients of naive ------------------------------------


@pytest.mark.parametrize("T,chunk_size", [(37, 16), (63, 64), (130, 16)])
@pytest.mark.parametrize("decay", ["retnet", "random"])
def test_chunk_gradients_match_naive(decay, T, chunk_size):
    q, k, v = make_qkv(T)
    S0 = make_state()
    log_decay = make_decay(decay)
    names = ["q", "k", "v", "S0"] + (["log_decay"] if log_decay is not None else [])
    inputs = [x.requires_grad_() for x in (q, k, v, S0, log_decay) if x is not None]

    def grads(fn, **extra):
        o, s = fn(q, k, v, log_decay=log_decay, initial_state=S0, output_final_state=True, **extra)
        return grads_of(loss_from([o, s], random_like_outputs([o, s])), inputs)

    ref = grads(naive_retention)
    got = grads(chunk_retention, chunk_size=chunk_size)
    for name, r, g in zip(names, ref, got, strict=True):
        assert_close(r, g, 1e-9, f"d{name}")


# ---- invariant 4: low precision, long sequences -----------------------------------------------


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("decay", DECAYS)
def test_low_precision(decay, dtype, rtol):
    q, k, v = make_qkv(130, dtype=dtype)
    log_decay, state = make_decay(decay, dtype=dtype), make_state(dtype=dtype)
    o_ref, s_ref = naive_retention(
        q.double(), k.double(), v.double(),
        log_decay=None if log_decay is None else log_decay.double(),
        initial_state=state.double(), output_final_state=True,
    )
    kw = {"log_decay": log_decay, "initial_state": state, "output_final_state": True}
    for fn, extra in ((chunk_retention, {"chunk_size": 64}), (recurrent_retention, {})):
        o, s = fn(q, k, v, **kw, **extra)
        assert o.dtype == dtype and s.dtype == torch.float32  # states accumulate in >= fp32
        assert_close(o_ref, o, rtol, f"{fn.__name__} output")
        assert_close(s_ref, s, rtol, f"{fn.__name__} final_state")


@pytest.mark.parametrize("decay", ["retnet", "zero"])
def test_long_sequence_finite(decay):
    q, k, v = make_qkv(2**16, dtype=torch.float32, b=1, h=1, dk=16, dv=16)
    o, s = chunk_retention(
        q, k, v, log_decay=make_decay(decay, h=1, dtype=torch.float32), output_final_state=True
    )
    assert torch.isfinite(o).all() and torch.isfinite(s).all()


# ---- bad input -> clear errors ----------------------------------------------------------------


@pytest.mark.parametrize("fn", [naive_retention, chunk_retention, recurrent_retention])
def test_errors(fn):
    q, k, v = make_qkv(8)
    with pytest.raises(ValueError, match=r"k must have 4 dims \[B, T, H, D\]"):
        fn(q, k[0], v)
    with pytest.raises(ValueError, match="q and k head dims differ"):
        fn(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same number of heads"):
        fn(q, k[:, :, :2], v[:, :, :2])
    with pytest.raises(ValueError, match=r"log_decay must have shape \[3\], got \[2\]"):
        fn(q, k, v, log_decay=torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="log_decay is a log-space forget gate and must be <= 0"):
        fn(q, k, v, log_decay=torch.full((H,), 0.5, dtype=F64))
    bad_shape = r"initial_state must have shape \[2, 3, 8, 5\], got \[2, 3, 5, 8\]"
    with pytest.raises(ValueError, match=bad_shape):
        fn(q, k, v, initial_state=torch.zeros(B, H, DV, DK, dtype=F64))


@pytest.mark.parametrize("chunk_size", [0, -1, 2.0])
def test_bad_chunk_size(chunk_size):
    q, k, v = make_qkv(8)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_retention(q, k, v, chunk_size=chunk_size)


def test_step_errors():
    q, k, v = make_qkv(1)
    with pytest.raises(ValueError, match=r"v for one decode step must be \[B, H, D\]"):
        retention_step(q[:, 0], k[:, 0], v, None)
    with pytest.raises(ValueError, match=r"state must have shape \[2, 3, 8, 5\]"):
        retention_step(q[:, 0], k[:, 0], v[:, 0], make_state()[:, :1])

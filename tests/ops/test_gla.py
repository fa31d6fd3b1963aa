"""gla: chunk == recurrent == naive (outputs, states, gradients), stability, dtypes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.ops.gla import chunk_gla, gla_step, naive_gla, recurrent_gla
from longctx.ops.gla.chunk import _sub_chunk_size
from longctx.ops.retention import naive_retention
from tests.helpers import assert_close, grads_of, loss_from, random_like_outputs, random_qkv

F64 = torch.float64
B, H, DK, DV = 2, 3, 8, 5
# (T, chunk_size): chunk sizes that do not divide T; 24 -> sub-chunks of 12, 37 -> of 1
SHAPES = [(1, 16), (37, 16), (63, 64), (130, 16), (130, 64), (130, 24), (100, 37)]
# "gla": the GLA layer's gate logsigmoid(x)/16; "harsh": logsigmoid(x), a chunk of 64 decays by
# ~e^-50; "extreme": 5 * logsigmoid(x), ~e^-250 per chunk (exp(-G) would overflow even fp64)
GATES = {"gla": 1 / 16, "harsh": 1.0, "extreme": 5.0}


def make_inputs(T, gate="gla", dtype=F64, b=B, h=H, dk=DK, dv=DV):
    q, k, v = random_qkv(b, T, h, dk, dv, dtype)
    g = F.logsigmoid(torch.randn(b, T, h, dk, dtype=F64)) * GATES[gate]
    return q, k, v, g.to(dtype)


def make_state(dtype=F64, b=B, h=H, dk=DK, dv=DV):
    return torch.randn(b, h, dk, dv, dtype=dtype)


def test_sub_chunk_size():
    assert [_sub_chunk_size(c) for c in (1, 8, 16, 24, 37, 64, 100)] == [1, 8, 16, 12, 1, 16, 10]


# ---- invariant 1: chunk == naive --------------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T,chunk_size", SHAPES)
@pytest.mark.parametrize("gate", list(GATES))
def test_chunk_matches_naive(gate, T, chunk_size, with_state):
    q, k, v, g = make_inputs(T, gate)
    state = make_state() if with_state else None
    o_ref, s_ref = naive_gla(q, k, v, g, initial_state=state, output_final_state=True)
    o, s = chunk_gla(
        q, k, v, g, initial_state=state, output_final_state=True, chunk_size=chunk_size
    )
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")
    assert s.shape == (B, H, DK, DV)


def test_no_final_state_unless_asked():
    q, k, v, g = make_inputs(10)
    for fn in (naive_gla, chunk_gla, recurrent_gla):
        assert fn(q, k, v, g)[1] is None


def test_empty_sequence_keeps_state():
    q, k, v, g = make_inputs(0)
    state = make_state()
    for fn in (naive_gla, chunk_gla, recurrent_gla):
        o, s = fn(q, k, v, g, initial_state=state, output_final_state=True)
        assert o.shape == (B, 0, H, DV)
        assert_close(state, s, 0.0, "final_state")


def test_head_constant_gate_is_retention():
    q, k, v, _ = make_inputs(70)
    log_decay = torch.log(torch.tensor([0.5, 0.9, 0.99], dtype=F64))
    g = log_decay[None, None, :, None].expand(B, 70, H, DK)
    o_ref, s_ref = naive_retention(q, k, v, log_decay=log_decay, output_final_state=True)
    o, s = chunk_gla(q, k, v, g, output_final_state=True, chunk_size=32)
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")


# ---- invariant 2: recurrent == naive; carrying the state across a split == one pass -----------


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("gate", list(GATES))
def test_recurrent_matches_naive(gate, T):
    q, k, v, g = make_inputs(T, gate)
    state = make_state()
    o_ref, s_ref = naive_gla(q, k, v, g, initial_state=state, output_final_state=True)
    o, s = recurrent_gla(q, k, v, g, initial_state=state, output_final_state=True)
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")


def test_step_by_step_decoding():
    q, k, v, g = make_inputs(9, "harsh")
    o_ref, s_ref = naive_gla(q, k, v, g, output_final_state=True)
    state, outs = None, []
    for t in range(q.shape[1]):
        o_t, state = gla_step(q[:, t], k[:, t], v[:, t], g[:, t], state)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), 1e-9)
    assert_close(s_ref, state, 1e-9, "final_state")


@pytest.mark.parametrize("split", [1, 20, 50])
@pytest.mark.parametrize("gate", ["gla", "harsh"])
def test_split_carry_state(gate, split):
    q, k, v, g = make_inputs(63, gate)
    o_ref, s_ref = naive_gla(q, k, v, g, output_final_state=True)
    for fn, extra in ((chunk_gla, {"chunk_size": 16}), (recurrent_gla, {})):
        a, b = slice(None, split), slice(split, None)
        o1, s1 = fn(q[:, a], k[:, a], v[:, a], g[:, a], output_final_state=True, **extra)
        o2, s2 = fn(
            q[:, b], k[:, b], v[:, b], g[:, b], initial_state=s1, output_final_state=True, **extra
        )
        assert_close(o_ref, torch.cat([o1, o2], 1), 1e-9, f"{fn.__name__} output")
        assert_close(s_ref, s2, 1e-9, f"{fn.__name__} final_state")


# ---- invariant 3: gradients of chunk == gradients of naive ------------------------------------


@pytest.mark.parametrize("T,chunk_size", [(37, 16), (63, 64), (100, 24)])
@pytest.mark.parametrize("gate", ["gla", "harsh"])
def test_chunk_gradients_match_naive(gate, T, chunk_size):
    q, k, v, g = make_inputs(T, gate)
    S0 = make_state()
    inputs = [x.requires_grad_() for x in (q, k, v, g, S0)]

    def grads(fn, **extra):
        o, s = fn(q, k, v, g, initial_state=S0, output_final_state=True, **extra)
        return grads_of(loss_from([o, s], random_like_outputs([o, s])), inputs)

    ref = grads(naive_gla)
    got = grads(chunk_gla, chunk_size=chunk_size)
    for name, r, gr in zip(("q", "k", "v", "g", "S0"), ref, got, strict=True):
        assert_close(r, gr, 1e-9, f"d{name}")


# ---- invariant 4: numerical stability, low precision, long sequences --------------------------


@pytest.mark.parametrize("gate", list(GATES))
def test_float32_stable(gate):
    """float32 chunk form vs the float64 reference, forward and backward, with strong gates."""
    q, k, v, g = make_inputs(256, gate, dtype=torch.float32)
    S0 = make_state(dtype=torch.float32)
    x32 = [x.requires_grad_() for x in (q, k, v, g, S0)]
    x64 = [x.detach().double().requires_grad_() for x in x32]
    o_ref, s_ref = naive_gla(*x64[:4], initial_state=x64[4], output_final_state=True)
    o, s = chunk_gla(*x32[:4], initial_state=x32[4], output_final_state=True, chunk_size=64)
    assert_close(o_ref, o, 1e-5)
    assert_close(s_ref, s, 1e-5, "final_state")
    cot = random_like_outputs([o_ref, s_ref])
    d_ref = grads_of(loss_from([o_ref, s_ref], cot), x64)
    d32 = grads_of(loss_from([o, s], [c.float() for c in cot]), x32)
    for name, r, d in zip(("q", "k", "v", "g", "S0"), d_ref, d32, strict=True):
        assert_close(r, d, 1e-4, f"d{name}")


@pytest.mark.parametrize("gate", ["gla", "harsh"])
def test_bfloat16(gate):
    q, k, v, g = make_inputs(130, gate, dtype=torch.bfloat16)
    state = make_state(dtype=torch.bfloat16)
    o_ref, s_ref = naive_gla(
        *(x.double() for x in (q, k, v, g)), initial_state=state.double(), output_final_state=True
    )
    for fn, extra in ((chunk_gla, {"chunk_size": 64}), (recurrent_gla, {})):
        o, s = fn(q, k, v, g, initial_state=state, output_final_state=True, **extra)
        assert o.dtype == torch.bfloat16 and s.dtype == torch.float32  # states in >= fp32
        assert_close(o_ref, o, 3e-2, f"{fn.__name__} output")
        assert_close(s_ref, s, 3e-2, f"{fn.__name__} final_state")


@pytest.mark.parametrize("gate", ["gla", "extreme"])
def test_long_sequence_finite(gate):
    q, k, v, g = make_inputs(2**16, gate, dtype=torch.float32, b=1, h=1, dk=16, dv=16)
    o, s = chunk_gla(q, k, v, g, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()


# ---- bad input -> clear errors ----------------------------------------------------------------


@pytest.mark.parametrize("fn", [naive_gla, chunk_gla, recurrent_gla])
def test_errors(fn):
    q, k, v, g = make_inputs(8)
    with pytest.raises(ValueError, match=r"v must have 4 dims \[B, T, H, D\]"):
        fn(q, k, v[..., 0], g)
    with pytest.raises(ValueError, match="q and k head dims differ"):
        fn(q, k[..., :4], v, g)
    with pytest.raises(ValueError, match="same number of heads"):
        fn(q, k[:, :, :2], v[:, :, :2], g)
    with pytest.raises(ValueError, match=r"g must have shape \[2, 8, 3, 8\], got \[2, 8, 3\]"):
        fn(q, k, v, g[..., 0])
    with pytest.raises(ValueError, match="g is a log-space forget gate and must be <= 0"):
        fn(q, k, v, torch.sigmoid(torch.randn_like(g)))
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 3, 8, 5\]"):
        fn(q, k, v, g, initial_state=make_state(dv=6))


@pytest.mark.parametrize("chunk_size", [0, -64, "64"])
def test_bad_chunk_size(chunk_size):
    q, k, v, g = make_inputs(8)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_gla(q, k, v, g, chunk_size=chunk_size)


def test_step_errors():
    q, k, v, g = make_inputs(1)
    with pytest.raises(ValueError, match=r"k for one decode step must be \[B, H, D\]"):
        gla_step(q[:, 0], k, v[:, 0], g[:, 0], None)
    with pytest.raises(ValueError, match=r"g_t must have shape \[2, 3, 8\]"):
        gla_step(q[:, 0], k[:, 0], v[:, 0], g, None)
    with pytest.raises(ValueError, match="g_t is a log-space forget gate"):
        gla_step(q[:, 0], k[:, 0], v[:, 0], -g[:, 0], None)
    with pytest.raises(ValueError, match=r"state must have shape \[2, 3, 8, 5\]"):
        gla_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], make_state(dk=4))

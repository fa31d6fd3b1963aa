"""gated_deltanet: chunk == recurrent == naive (outputs, states, every gradient incl. g and
beta), g = 0 is DeltaNet, harsh gates, dtypes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.ops.deltanet import naive_delta_rule
from longctx.ops.gated_deltanet import (
    chunk_gated_delta_rule,
    gated_delta_rule_step,
    naive_gated_delta_rule,
    recurrent_gated_delta_rule,
)
from tests.helpers import assert_close, grads_of, loss_from, random_like_outputs, random_qkv

F64 = torch.float64
B, H, DK, DV = 2, 3, 8, 5
SHAPES = [(1, 16), (5, 1), (37, 16), (63, 64), (130, 16), (130, 64), (100, 37)]
FNS = [naive_gated_delta_rule, chunk_gated_delta_rule, recurrent_gated_delta_rule]
# g = scale * logsigmoid(x): "mild" ~ a Mamba-2 gate after training; "harsh": a chunk of 64 decays
# by ~e^-230, so any exp(-G) (the unstable factorisation) would overflow even float64
GATES = {"mild": 1 / 16, "unit": 1.0, "harsh": 5.0}
NAMES = ("q", "k", "v", "g", "beta", "S0")


def make_inputs(T, gate="unit", dtype=F64, b=B, h=H, dk=DK, dv=DV):
    """Unit-norm keys, g = logsigmoid(x) * GATES[gate] <= 0, beta = 2 sigmoid(x) in (0, 2)."""
    q, k, v = random_qkv(b, T, h, dk, dv, F64)
    k = F.normalize(k, dim=-1)
    g = F.logsigmoid(torch.randn(b, T, h, dtype=F64)) * GATES[gate]
    beta = 2 * torch.sigmoid(torch.randn(b, T, h, dtype=F64))
    return tuple(x.to(dtype) for x in (q, k, v, g, beta))


def make_state(dtype=F64, b=B, h=H, dk=DK, dv=DV):
    return torch.randn(b, h, dk, dv, dtype=dtype)


# ---- invariant 1: chunk == naive --------------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T,chunk_size", SHAPES)
@pytest.mark.parametrize("gate", list(GATES))
def test_chunk_matches_naive(gate, T, chunk_size, with_state):
    q, k, v, g, beta = make_inputs(T, gate)
    state = make_state() if with_state else None
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta, initial_state=state,
                                          output_final_state=True)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True,
                                  chunk_size=chunk_size)
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")
    assert s.shape == (B, H, DK, DV)


def test_zero_gate_is_deltanet():
    q, k, v, g, beta = make_inputs(70)
    state = make_state()
    o_ref, s_ref = naive_delta_rule(q, k, v, beta, initial_state=state, output_final_state=True)
    for fn, extra in ((naive_gated_delta_rule, {}), (chunk_gated_delta_rule, {"chunk_size": 32}),
                      (recurrent_gated_delta_rule, {})):
        o, s = fn(q, k, v, torch.zeros_like(g), beta, initial_state=state,
                  output_final_state=True, **extra)
        assert_close(o_ref, o, 1e-9, f"{fn.__name__} output")
        assert_close(s_ref, s, 1e-9, f"{fn.__name__} final_state")


def test_no_final_state_unless_asked():
    inputs = make_inputs(10)
    for fn in FNS:
        assert fn(*inputs)[1] is None


def test_empty_sequence_keeps_state():
    inputs = make_inputs(0)
    state = make_state()
    for fn in FNS:
        o, s = fn(*inputs, initial_state=state, output_final_state=True)
        assert o.shape == (B, 0, H, DV)
        assert_close(state, s, 0.0, "final_state")


# ---- invariant 2: recurrent == naive; carrying the state across a split == one pass -----------


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("gate", list(GATES))
def test_recurrent_matches_naive(gate, T):
    inputs = make_inputs(T, gate)
    state = make_state()
    o_ref, s_ref = naive_gated_delta_rule(*inputs, initial_state=state, output_final_state=True)
    o, s = recurrent_gated_delta_rule(*inputs, initial_state=state, output_final_state=True)
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")


def test_step_by_step_decoding():
    inputs = make_inputs(9, "harsh")
    o_ref, s_ref = naive_gated_delta_rule(*inputs, output_final_state=True)
    state, outs = None, []
    for t in range(9):
        o_t, state = gated_delta_rule_step(*(x[:, t] for x in inputs), state)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), 1e-9)
    assert_close(s_ref, state, 1e-9, "final_state")


@pytest.mark.parametrize("split", [1, 20, 50])
@pytest.mark.parametrize("gate", ["mild", "harsh"])
def test_split_carry_state(gate, split):
    inputs = make_inputs(63, gate)
    o_ref, s_ref = naive_gated_delta_rule(*inputs, output_final_state=True)
    first = [x[:, :split] for x in inputs]
    second = [x[:, split:] for x in inputs]
    for fn, extra in ((chunk_gated_delta_rule, {"chunk_size": 16}),
                      (recurrent_gated_delta_rule, {})):
        o1, s1 = fn(*first, output_final_state=True, **extra)
        o2, s2 = fn(*second, initial_state=s1, output_final_state=True, **extra)
        assert_close(o_ref, torch.cat([o1, o2], 1), 1e-9, f"{fn.__name__} output")
        assert_close(s_ref, s2, 1e-9, f"{fn.__name__} final_state")


# ---- invariant 3: gradients (q, k, v, g, beta, initial_state) ----------------------------------


def _grads(fn, inputs, **extra):
    o, s = fn(*inputs[:5], initial_state=inputs[5], output_final_state=True, **extra)
    return grads_of(loss_from([o, s], random_like_outputs([o, s])), inputs)


@pytest.mark.parametrize("T,chunk_size", [(37, 16), (63, 64), (100, 24)])
@pytest.mark.parametrize("gate", ["mild", "harsh"])
def test_chunk_gradients_match_naive(gate, T, chunk_size):
    inputs = [x.requires_grad_() for x in (*make_inputs(T, gate), make_state())]
    ref = _grads(naive_gated_delta_rule, inputs)
    got = _grads(chunk_gated_delta_rule, inputs, chunk_size=chunk_size)
    for name, r, g in zip(NAMES, ref, got, strict=True):
        assert_close(r, g, 1e-9, f"d{name}")


def test_recurrent_gradients_match_naive():
    inputs = [x.requires_grad_() for x in (*make_inputs(21), make_state())]
    ref = _grads(naive_gated_delta_rule, inputs)
    got = _grads(recurrent_gated_delta_rule, inputs)
    for name, r, g in zip(NAMES, ref, got, strict=True):
        assert_close(r, g, 1e-9, f"d{name}")


# ---- use_qk_l2norm, gate and beta checks ------------------------------------------------------


def test_use_qk_l2norm():
    q, k, v, g, beta = make_inputs(37)
    q, k = (3 * torch.randn_like(x) for x in (q, k))  # not unit-norm
    inputs = [x.requires_grad_() for x in (q, k, v, g, beta, make_state())]
    o_ref, s_ref = naive_gated_delta_rule(
        F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, g, beta, initial_state=inputs[5],
        output_final_state=True,
    )
    o, s = chunk_gated_delta_rule(*inputs[:5], initial_state=inputs[5], output_final_state=True,
                                  use_qk_l2norm=True, chunk_size=16)
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")
    ref = _grads(naive_gated_delta_rule, inputs, use_qk_l2norm=True)
    got = _grads(chunk_gated_delta_rule, inputs, use_qk_l2norm=True, chunk_size=16)
    for name, r, gr in zip(NAMES, ref, got, strict=True):
        assert_close(r, gr, 1e-9, f"d{name}")
    o_t, _ = gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], inputs[5],
                                   use_qk_l2norm=True)
    assert_close(o[:, 0], o_t, 1e-12, "step output")


@pytest.mark.parametrize("fn", FNS)
def test_bad_values_refused(fn):
    q, k, v, g, beta = make_inputs(8)
    with pytest.raises(ValueError, match=r"k must be L2-normalised.*use_qk_l2norm=True"):
        fn(q, 1.1 * k, v, g, beta)
    with pytest.raises(ValueError, match="g is a log-space forget gate and must be <= 0"):
        fn(q, k, v, torch.sigmoid(g), beta)
    for value in (-0.1, 2.5):
        bad = beta.clone()
        bad[0, 3, 1] = value
        with pytest.raises(ValueError, match=r"beta .*must lie in \[0, 2\]"):
            fn(q, k, v, g, bad)


# ---- invariant 4: numerical stability, low precision, long sequences --------------------------


@pytest.mark.parametrize("gate", list(GATES))
def test_float32_stable(gate):
    """float32 chunk form vs the float64 reference, forward and every gradient, harsh gates too."""
    x32 = [x.requires_grad_() for x in (*make_inputs(256, gate, torch.float32),
                                          make_state(torch.float32))]
    x64 = [x.detach().double().requires_grad_() for x in x32]
    o_ref, s_ref = naive_gated_delta_rule(*x64[:5], initial_state=x64[5], output_final_state=True)
    o, s = chunk_gated_delta_rule(*x32[:5], initial_state=x32[5], output_final_state=True)
    assert_close(o_ref, o, 1e-5)
    assert_close(s_ref, s, 1e-5, "final_state")
    cot = random_like_outputs([o_ref, s_ref])
    d_ref = grads_of(loss_from([o_ref, s_ref], cot), x64)
    d32 = grads_of(loss_from([o, s], [c.float() for c in cot]), x32)
    for name, r, d in zip(NAMES, d_ref, d32, strict=True):
        assert_close(r, d, 1e-4, f"d{name}")


@pytest.mark.parametrize("gate", ["mild", "harsh"])
def test_bfloat16(gate):
    """bf16 inputs (rounded from float64) vs the float64 reference on the unrounded inputs."""
    x64 = (*make_inputs(130, gate), make_state())
    xbf = [x.to(torch.bfloat16) for x in x64]
    o_ref, s_ref = naive_gated_delta_rule(*x64[:5], initial_state=x64[5], output_final_state=True)
    for fn, extra in ((chunk_gated_delta_rule, {"chunk_size": 64}),
                      (recurrent_gated_delta_rule, {})):
        o, s = fn(*xbf[:5], initial_state=xbf[5], output_final_state=True, **extra)
        assert o.dtype == torch.bfloat16 and s.dtype == torch.float32  # states in >= fp32
        assert_close(o_ref, o, 2e-2, f"{fn.__name__} output")
        assert_close(s_ref, s, 2e-2, f"{fn.__name__} final_state")


@pytest.mark.parametrize("gate", ["mild", "harsh"])
def test_long_sequence_finite(gate):
    inputs = make_inputs(2**16, gate, torch.float32, b=1, h=1, dk=16, dv=16)
    o, s = chunk_gated_delta_rule(*inputs, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()


# ---- bad input -> clear errors ----------------------------------------------------------------


@pytest.mark.parametrize("fn", FNS)
def test_errors(fn):
    q, k, v, g, beta = make_inputs(8)
    with pytest.raises(ValueError, match=r"v must have 4 dims \[B, T, H, D\]"):
        fn(q, k, v[..., 0], g, beta)
    with pytest.raises(ValueError, match="same number of heads"):
        fn(q, k[:, :, :2], v[:, :, :2], g, beta)
    with pytest.raises(ValueError, match=r"g must have shape \[2, 8, 3\], got \[2, 8, 3, 8\]"):
        fn(q, k, v, g[..., None].expand(-1, -1, -1, DK), beta)
    with pytest.raises(ValueError, match=r"beta must have shape \[2, 8, 3\], got \[2, 8\]"):
        fn(q, k, v, g, beta[..., 0])
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 3, 8, 5\]"):
        fn(q, k, v, g, beta, initial_state=make_state(dv=6))


@pytest.mark.parametrize("chunk_size", [0, -64, "64"])
def test_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_gated_delta_rule(*make_inputs(8), chunk_size=chunk_size)


def test_step_errors():
    q, k, v, g, beta = (x[:, 0] for x in make_inputs(1))
    with pytest.raises(ValueError, match=r"v for one decode step must be \[B, H, D\]"):
        gated_delta_rule_step(q, k, v[..., None], g, beta, None)
    with pytest.raises(ValueError, match=r"g_t must have shape \[2, 3\]"):
        gated_delta_rule_step(q, k, v, g[..., None], beta, None)
    with pytest.raises(ValueError, match="g_t is a log-space forget gate"):
        gated_delta_rule_step(q, k, v, -g, beta, None)
    with pytest.raises(ValueError, match=r"beta_t .*must lie in \[0, 2\]"):
        gated_delta_rule_step(q, k, v, g, beta + 2, None)
    with pytest.raises(ValueError, match=r"k_t must be L2-normalised"):
        gated_delta_rule_step(q, 2 * k, v, g, beta, None)
    with pytest.raises(ValueError, match=r"state must have shape \[2, 3, 8, 5\]"):
        gated_delta_rule_step(q, k, v, g, beta, make_state(dk=4))

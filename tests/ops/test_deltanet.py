"""deltanet: chunk == recurrent == naive (outputs, states, every gradient), key-norm and beta
checks, dtypes, bounded state, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.ops.deltanet import (
    chunk_delta_rule,
    delta_rule_step,
    naive_delta_rule,
    recurrent_delta_rule,
)
from tests.helpers import assert_close, grads_of, loss_from, random_like_outputs, random_qkv

F64 = torch.float64
B, H, DK, DV = 2, 3, 8, 5
# (T, chunk_size): odd lengths, chunk sizes that do not divide T, chunk_size 1 and > T
SHAPES = [(1, 16), (5, 1), (37, 16), (63, 64), (130, 16), (130, 64), (100, 37)]
FNS = [naive_delta_rule, chunk_delta_rule, recurrent_delta_rule]


def make_inputs(T, dtype=F64, b=B, h=H, dk=DK, dv=DV):
    """Unit-norm keys and beta = 2 sigmoid(x) in (0, 2) (negative eigenvalues included)."""
    q, k, v = random_qkv(b, T, h, dk, dv, F64)
    k = F.normalize(k, dim=-1)
    beta = 2 * torch.sigmoid(torch.randn(b, T, h, dtype=F64))
    return tuple(x.to(dtype) for x in (q, k, v, beta))


def make_state(dtype=F64, b=B, h=H, dk=DK, dv=DV):
    return torch.randn(b, h, dk, dv, dtype=dtype)


# ---- invariant 1: chunk == naive --------------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T,chunk_size", SHAPES)
def test_chunk_matches_naive(T, chunk_size, with_state):
    q, k, v, beta = make_inputs(T)
    state = make_state() if with_state else None
    o_ref, s_ref = naive_delta_rule(q, k, v, beta, initial_state=state, output_final_state=True)
    o, s = chunk_delta_rule(
        q, k, v, beta, initial_state=state, output_final_state=True, chunk_size=chunk_size
    )
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")
    assert s.shape == (B, H, DK, DV)


def test_naive_is_the_householder_recurrence():
    """naive's update, written out as the paper's product form (I - beta k k^T) S + beta k v^T."""
    q, k, v, beta = make_inputs(6)
    S = make_state()
    o, s = naive_delta_rule(q, k, v, beta, initial_state=S, output_final_state=True, scale=1.0)
    eye = torch.eye(DK, dtype=F64)
    for t in range(6):
        kk = k[:, t].unsqueeze(-1)
        b = beta[:, t, :, None, None]
        S = (eye - b * kk @ kk.transpose(-1, -2)) @ S + b * kk @ v[:, t].unsqueeze(-2)
        assert_close((q[:, t].unsqueeze(-2) @ S).squeeze(-2), o[:, t], 1e-12, f"o_{t}")
    assert_close(S, s, 1e-12, "final_state")


def test_no_final_state_unless_asked():
    q, k, v, beta = make_inputs(10)
    for fn in FNS:
        assert fn(q, k, v, beta)[1] is None


def test_empty_sequence_keeps_state():
    q, k, v, beta = make_inputs(0)
    state = make_state()
    for fn in FNS:
        o, s = fn(q, k, v, beta, initial_state=state, output_final_state=True)
        assert o.shape == (B, 0, H, DV)
        assert_close(state, s, 0.0, "final_state")


def test_zero_beta_is_no_write():
    q, k, v, _ = make_inputs(20)
    state = make_state()
    o, s = chunk_delta_rule(q, k, v, torch.zeros(B, 20, H, dtype=F64), initial_state=state,
                            output_final_state=True, chunk_size=8)
    assert_close(state, s, 0.0, "final_state")
    assert_close(torch.einsum("bthd,bhde->bthe", q * DK**-0.5, state), o, 1e-12)


# ---- invariant 2: recurrent == naive; carrying the state across a split == one pass -----------


@pytest.mark.parametrize("T", [1, 37])
def test_recurrent_matches_naive(T):
    q, k, v, beta = make_inputs(T)
    state = make_state()
    o_ref, s_ref = naive_delta_rule(q, k, v, beta, initial_state=state, output_final_state=True)
    o, s = recurrent_delta_rule(q, k, v, beta, initial_state=state, output_final_state=True)
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")


def test_step_by_step_decoding():
    q, k, v, beta = make_inputs(9)
    o_ref, s_ref = naive_delta_rule(q, k, v, beta, output_final_state=True)
    state, outs = None, []
    for t in range(q.shape[1]):
        o_t, state = delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], state)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), 1e-9)
    assert_close(s_ref, state, 1e-9, "final_state")


@pytest.mark.parametrize("split", [1, 20, 50])
def test_split_carry_state(split):
    q, k, v, beta = make_inputs(63)
    o_ref, s_ref = naive_delta_rule(q, k, v, beta, output_final_state=True)
    a, b = slice(None, split), slice(split, None)
    for fn, extra in ((chunk_delta_rule, {"chunk_size": 16}), (recurrent_delta_rule, {})):
        o1, s1 = fn(q[:, a], k[:, a], v[:, a], beta[:, a], output_final_state=True, **extra)
        o2, s2 = fn(q[:, b], k[:, b], v[:, b], beta[:, b], initial_state=s1,
                    output_final_state=True, **extra)
        assert_close(o_ref, torch.cat([o1, o2], 1), 1e-9, f"{fn.__name__} output")
        assert_close(s_ref, s2, 1e-9, f"{fn.__name__} final_state")


# ---- invariant 3: gradients (q, k, v, beta, initial_state) -------------------------------------


def _grads(fn, inputs, **extra):
    q, k, v, beta, S0 = inputs
    o, s = fn(q, k, v, beta, initial_state=S0, output_final_state=True, **extra)
    return grads_of(loss_from([o, s], random_like_outputs([o, s])), inputs)


@pytest.mark.parametrize("T,chunk_size", [(37, 16), (63, 64), (100, 24)])
def test_chunk_gradients_match_naive(T, chunk_size):
    inputs = [x.requires_grad_() for x in (*make_inputs(T), make_state())]
    ref = _grads(naive_delta_rule, inputs)
    got = _grads(chunk_delta_rule, inputs, chunk_size=chunk_size)
    for name, r, g in zip(("q", "k", "v", "beta", "S0"), ref, got, strict=True):
        assert_close(r, g, 1e-9, f"d{name}")


def test_recurrent_gradients_match_naive():
    inputs = [x.requires_grad_() for x in (*make_inputs(21), make_state())]
    ref = _grads(naive_delta_rule, inputs)
    got = _grads(recurrent_delta_rule, inputs)
    for name, r, g in zip(("q", "k", "v", "beta", "S0"), ref, got, strict=True):
        assert_close(r, g, 1e-9, f"d{name}")


# ---- use_qk_l2norm: normalise inside the op, or refuse non-unit keys ---------------------------


def test_use_qk_l2norm_normalises_q_and_k():
    q, k, v, beta = make_inputs(37)
    q, k = (3 * torch.randn_like(x) for x in (q, k))  # not unit-norm
    state = make_state()
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    o_ref, s_ref = naive_delta_rule(qn, kn, v, beta, initial_state=state, output_final_state=True)
    for fn, extra in ((naive_delta_rule, {}), (chunk_delta_rule, {"chunk_size": 16}),
                      (recurrent_delta_rule, {})):
        o, s = fn(q, k, v, beta, initial_state=state, output_final_state=True,
                  use_qk_l2norm=True, **extra)
        assert_close(o_ref, o, 1e-9, f"{fn.__name__} output")
        assert_close(s_ref, s, 1e-9, f"{fn.__name__} final_state")
    o_t, s_t = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], state, use_qk_l2norm=True)
    o_1, s_1 = naive_delta_rule(qn[:, :1], kn[:, :1], v[:, :1], beta[:, :1], initial_state=state,
                                output_final_state=True)
    assert_close(o_1[:, 0], o_t, 1e-12, "step output")
    assert_close(s_1, s_t, 1e-12, "step state")


def test_use_qk_l2norm_gradients():
    q, k, v, beta = make_inputs(37)
    q, k = (3 * torch.randn_like(x) for x in (q, k))
    inputs = [x.requires_grad_() for x in (q, k, v, beta, make_state())]
    ref = _grads(naive_delta_rule, inputs, use_qk_l2norm=True)
    got = _grads(chunk_delta_rule, inputs, use_qk_l2norm=True, chunk_size=16)
    for name, r, g in zip(("q", "k", "v", "beta", "S0"), ref, got, strict=True):
        assert_close(r, g, 1e-9, f"d{name}")


@pytest.mark.parametrize("fn", FNS)
def test_non_unit_keys_refused(fn):
    q, k, v, beta = make_inputs(8)
    with pytest.raises(ValueError, match=r"k must be L2-normalised.*use_qk_l2norm=True"):
        fn(q, k * 1.01, v, beta)
    with pytest.raises(ValueError, match=r"k_t must be L2-normalised.*use_qk_l2norm=True"):
        delta_rule_step(q[:, 0], 2 * k[:, 0], v[:, 0], beta[:, 0], None)
    k0 = k.clone()
    k0[:, 3] = 0.0  # an all-zero key is a no-op write, allowed
    fn(q, k0, v, beta)


@pytest.mark.parametrize(
    "dtype,ok,bad", [(F64, 1 + 5e-7, 1 + 5e-6), (torch.float32, 1 + 5e-4, 1 + 5e-3),
                     (torch.bfloat16, 1.0078125, 1.03125)]
)
def test_key_norm_tolerance_per_dtype(dtype, ok, bad):
    q, _, v, beta = make_inputs(4, dtype=dtype)
    e = torch.zeros(B, 4, H, DK, dtype=dtype)
    e[..., 0] = 1.0
    chunk_delta_rule(q, e * ok, v, beta)  # within the tolerance
    with pytest.raises(ValueError, match=f"tolerance .* for {dtype}"):
        chunk_delta_rule(q, e * bad, v, beta)


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("value", [-0.1, 2.5, float("nan")])
def test_beta_out_of_range_refused(fn, value):
    q, k, v, beta = make_inputs(8)
    beta[1, 5, 2] = value
    with pytest.raises(ValueError, match=r"beta .*must lie in \[0, 2\]"):
        fn(q, k, v, beta)
    with pytest.raises(ValueError, match=r"beta_t .*must lie in \[0, 2\]"):
        delta_rule_step(q[:, 5], k[:, 5], v[:, 5], beta[:, 5], None)


def test_beta_range_ends_accepted():
    """beta = 0 (no write) and beta = 2 (a Householder reflection, Grazzi et al. 2025) are both
    non-expansive; a saturated sigmoid gives them exactly, so they are allowed."""
    q, k, v, beta = make_inputs(20)
    beta[:, ::2] = 2.0
    beta[:, 1::4] = 0.0
    o_ref, s_ref = naive_delta_rule(q, k, v, beta, output_final_state=True)
    o, s = chunk_delta_rule(q, k, v, beta, output_final_state=True, chunk_size=8)
    assert_close(o_ref, o, 1e-9)
    assert_close(s_ref, s, 1e-9, "final_state")


# ---- invariant 4: precision, bounded state, long sequences ------------------------------------


def test_float32_stable():
    """float32 chunk form vs the float64 reference, forward and every gradient."""
    x32 = [x.requires_grad_() for x in (*make_inputs(256, torch.float32),
                                          make_state(torch.float32))]
    x64 = [x.detach().double().requires_grad_() for x in x32]
    o_ref, s_ref = naive_delta_rule(*x64[:4], initial_state=x64[4], output_final_state=True)
    o, s = chunk_delta_rule(*x32[:4], initial_state=x32[4], output_final_state=True)
    assert_close(o_ref, o, 1e-5)
    assert_close(s_ref, s, 1e-5, "final_state")
    cot = random_like_outputs([o_ref, s_ref])
    d_ref = grads_of(loss_from([o_ref, s_ref], cot), x64)
    d32 = grads_of(loss_from([o, s], [c.float() for c in cot]), x32)
    for name, r, d in zip(("q", "k", "v", "beta", "S0"), d_ref, d32, strict=True):
        assert_close(r, d, 1e-4, f"d{name}")


def test_bfloat16():
    """bf16 inputs (rounded from float64) vs the float64 reference on the unrounded inputs."""
    x64 = (*make_inputs(130), make_state())
    xbf = [x.to(torch.bfloat16) for x in x64]
    o_ref, s_ref = naive_delta_rule(*x64[:4], initial_state=x64[4], output_final_state=True)
    for fn, extra in ((chunk_delta_rule, {"chunk_size": 64}), (recurrent_delta_rule, {})):
        o, s = fn(*xbf[:4], initial_state=xbf[4], output_final_state=True, **extra)
        assert o.dtype == torch.bfloat16 and s.dtype == torch.float32  # states in >= fp32
        assert_close(o_ref, o, 2e-2, f"{fn.__name__} output")
        assert_close(s_ref, s, 2e-2, f"{fn.__name__} final_state")


def test_state_norm_bounded():
    """With unit keys and 0 < beta < 2 every update is non-expansive in the key direction: over
    T = 4096 the state norm plateaus (linear attention's would grow like sqrt(T))."""
    T, h, d = 4096, 4, 16
    q, k, v, beta = make_inputs(T, torch.float32, b=1, h=h, dk=d, dv=d)
    S, norms = None, []
    for i in range(0, T, 256):
        part = (x[:, i : i + 256] for x in (q, k, v, beta))
        o, S = chunk_delta_rule(*part, initial_state=S, output_final_state=True)
        assert torch.isfinite(o).all()
        norms.append(S.norm(dim=(-1, -2)).max().item())
    assert max(norms[8:]) < 1.5 * max(norms[:2]), norms
    assert max(norms) < 4 * d, norms  # ~25 measured; sum of ||v||^2 would be ~1000


def test_long_sequence_finite():
    q, k, v, beta = make_inputs(2**16, torch.float32, b=1, h=1, dk=16, dv=16)
    o, s = chunk_delta_rule(q, k, v, beta, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()


# ---- bad input -> clear errors ----------------------------------------------------------------


@pytest.mark.parametrize("fn", FNS)
def test_errors(fn):
    q, k, v, beta = make_inputs(8)
    with pytest.raises(ValueError, match=r"v must have 4 dims \[B, T, H, D\]"):
        fn(q, k, v[..., 0], beta)
    with pytest.raises(ValueError, match="q and k head dims differ"):
        fn(q, k[..., :4], v, beta)
    with pytest.raises(ValueError, match=r"beta must have shape \[2, 8, 3\], got \[2, 8, 3, 1\]"):
        fn(q, k, v, beta[..., None])
    with pytest.raises(TypeError, match="beta must be a torch.Tensor"):
        fn(q, k, v, 0.5)
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 3, 8, 5\]"):
        fn(q, k, v, beta, initial_state=make_state(dv=6))


@pytest.mark.parametrize("chunk_size", [0, -64, "64"])
def test_bad_chunk_size(chunk_size):
    q, k, v, beta = make_inputs(8)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_delta_rule(q, k, v, beta, chunk_size=chunk_size)


def test_step_errors():
    q, k, v, beta = make_inputs(1)
    with pytest.raises(ValueError, match=r"k for one decode step must be \[B, H, D\]"):
        delta_rule_step(q[:, 0], k, v[:, 0], beta[:, 0], None)
    with pytest.raises(ValueError, match=r"beta_t must have shape \[2, 3\]"):
        delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta, None)
    with pytest.raises(ValueError, match=r"state must have shape \[2, 3, 8, 5\]"):
        delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], make_state(dk=4))

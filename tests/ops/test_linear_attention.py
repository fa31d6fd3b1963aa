"""linear_attention: chunk == recurrent == naive (outputs, states, gradients), dtypes, errors."""

from __future__ import annotations

import math

import pytest
import torch

from longctx.ops.linear_attention import (
    FEATURE_MAPS,
    chunk_linear_attention,
    feature_dim,
    linear_attention_step,
    naive_linear_attention,
    recurrent_linear_attention,
)
from longctx.ops.linear_attention.feature_maps import apply_feature_map
from tests.helpers import (
    assert_close,
    assert_states_close,
    flatten_state,
    grads_of,
    loss_from,
    random_like_outputs,
    random_qkv,
)

F64 = torch.float64
B, H, DK, DV = 2, 3, 8, 5
SHAPES = [(1, 16), (37, 16), (63, 64), (130, 16), (130, 64)]  # (T, chunk_size)
MAPS_NORM = [(fm, norm) for fm in FEATURE_MAPS for norm in (False, True)]


def forms(chunk_size):
    """(function, extra kwargs) for the chunk and recurrent forms."""
    return ((chunk_linear_attention, {"chunk_size": chunk_size}), (recurrent_linear_attention, {}))


def make_qkv(T, dtype=F64, b=B, h=H, dk=DK, dv=DV):
    return random_qkv(b, T, h, dk, dv, dtype)


def make_state(feature_map, dtype=F64, b=B, h=H, dk=DK, dv=DV):
    fd = feature_dim(feature_map, dk)
    # z > 0, as it is for the positive feature maps
    return torch.randn(b, h, fd, dv, dtype=dtype), torch.rand(b, h, fd, dtype=dtype) + 0.5


# ---- the feature maps -------------------------------------------------------------------------


def test_feature_dim():
    assert feature_dim("identity", 8) == 8
    assert feature_dim("elu+1", 8) == 8
    assert feature_dim("relu", 8) == 8
    assert feature_dim("taylor", 8) == 1 + 8 + 64
    with pytest.raises(ValueError, match="unknown feature_map 'softmax'; valid: identity, elu"):
        feature_dim("softmax", 8)


def test_taylor_map_is_second_order_exp():
    x, y = torch.randn(4, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    dot = (x * y).sum(-1)
    got = (apply_feature_map(x, "taylor") * apply_feature_map(y, "taylor")).sum(-1)
    assert_close(1 + dot + dot**2 / 2, got, 1e-12)
    # with the default scale it approximates softmax's exp(q.k / sqrt(D)) for small scores
    q, k = 0.1 * torch.randn(6, dtype=F64), 0.1 * torch.randn(6, dtype=F64)
    phi_q = apply_feature_map(q * 6**-0.5, "taylor")
    approx = (phi_q * apply_feature_map(k, "taylor")).sum()
    assert abs(approx.item() - math.exp((q @ k).item() / math.sqrt(6))) < 1e-4


# ---- invariant 1: chunk == naive --------------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T,chunk_size", SHAPES)
@pytest.mark.parametrize("feature_map,normalize", MAPS_NORM)
def test_chunk_matches_naive(feature_map, normalize, T, chunk_size, with_state):
    q, k, v = make_qkv(T)
    state = make_state(feature_map) if with_state else None
    kw = {"feature_map": feature_map, "normalize": normalize, "output_final_state": True}
    o_ref, s_ref = naive_linear_attention(q, k, v, initial_state=state, **kw)
    o, s = chunk_linear_attention(q, k, v, initial_state=state, chunk_size=chunk_size, **kw)
    assert_close(o_ref, o, 1e-9)
    assert_states_close(s_ref, s, 1e-9)
    fd = feature_dim(feature_map, DK)
    assert s[0].shape == (B, H, fd, DV) and s[1].shape == (B, H, fd)


def test_no_final_state_unless_asked():
    q, k, v = make_qkv(10)
    for fn in (naive_linear_attention, chunk_linear_attention, recurrent_linear_attention):
        assert fn(q, k, v)[1] is None


def test_empty_sequence_keeps_state():
    q, k, v = make_qkv(0)
    state = make_state("elu+1")
    for fn in (naive_linear_attention, chunk_linear_attention, recurrent_linear_attention):
        o, s = fn(q, k, v, initial_state=state, output_final_state=True)
        assert o.shape == (B, 0, H, DV)
        assert_states_close(state, s, 0.0)


def test_default_scale_and_explicit_scale():
    q, k, v = make_qkv(20)
    o1, _ = chunk_linear_attention(q, k, v, feature_map="taylor", chunk_size=8)
    o2, _ = naive_linear_attention(q * DK**-0.5, k, v, feature_map="taylor", scale=1.0)
    assert_close(o2, o1, 1e-12)


# ---- invariant 2: recurrent == naive; carrying the state across a split == one pass -----------


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("feature_map,normalize", MAPS_NORM)
def test_recurrent_matches_naive(feature_map, normalize, T):
    q, k, v = make_qkv(T)
    state = make_state(feature_map)
    kw = {"feature_map": feature_map, "normalize": normalize, "output_final_state": True}
    o_ref, s_ref = naive_linear_attention(q, k, v, initial_state=state, **kw)
    o, s = recurrent_linear_attention(q, k, v, initial_state=state, **kw)
    assert_close(o_ref, o, 1e-9)
    assert_states_close(s_ref, s, 1e-9)


@pytest.mark.parametrize("feature_map,normalize", MAPS_NORM)
def test_step_by_step_decoding(feature_map, normalize):
    q, k, v = make_qkv(9)
    kw = {"feature_map": feature_map, "normalize": normalize}
    o_ref, s_ref = naive_linear_attention(q, k, v, output_final_state=True, **kw)
    state, outs = None, []
    for t in range(q.shape[1]):
        o_t, state = linear_attention_step(q[:, t], k[:, t], v[:, t], state, **kw)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), 1e-9)
    assert_states_close(s_ref, state, 1e-9)


@pytest.mark.parametrize("split", [1, 20, 50])
@pytest.mark.parametrize("feature_map,normalize", MAPS_NORM)
def test_split_carry_state(feature_map, normalize, split):
    q, k, v = make_qkv(63)
    kw = {"feature_map": feature_map, "normalize": normalize, "output_final_state": True}
    o_ref, s_ref = naive_linear_attention(q, k, v, **kw)
    for fn, extra in forms(16):
        o1, s1 = fn(q[:, :split], k[:, :split], v[:, :split], **kw, **extra)
        o2, s2 = fn(q[:, split:], k[:, split:], v[:, split:], initial_state=s1, **kw, **extra)
        assert_close(o_ref, torch.cat([o1, o2], 1), 1e-9, f"{fn.__name__} output")
        assert_states_close(s_ref, s2, 1e-9, f"{fn.__name__} final_state")


# ---- invariant 3: gradients of chunk == gradients of naive ------------------------------------


@pytest.mark.parametrize("T,chunk_size", [(37, 16), (63, 64)])
@pytest.mark.parametrize("feature_map,normalize", MAPS_NORM)
def test_chunk_gradients_match_naive(feature_map, normalize, T, chunk_size):
    q, k, v = make_qkv(T)
    S0, z0 = make_state(feature_map)
    inputs = [x.requires_grad_() for x in (q, k, v, S0, z0)]
    kw = {"feature_map": feature_map, "normalize": normalize, "output_final_state": True}

    def grads(fn, **extra):
        o, s = fn(q, k, v, initial_state=(S0, z0), **kw, **extra)
        outs = [o, *flatten_state(s)]
        return grads_of(loss_from(outs, random_like_outputs(outs)), inputs)

    ref = grads(naive_linear_attention)
    got = grads(chunk_linear_attention, chunk_size=chunk_size)
    for name, r, g in zip(("q", "k", "v", "S0", "z0"), ref, got, strict=True):
        assert_close(r, g, 1e-9, f"d{name}")


# ---- invariant 4: low precision, long sequences -----------------------------------------------

POSITIVE_MAPS_NORM = [(fm, n) for fm, n in MAPS_NORM if not (fm == "identity" and n)]


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("feature_map,normalize", POSITIVE_MAPS_NORM)
def test_low_precision(feature_map, normalize, dtype, rtol):
    # identity + normalize is left out: its denominator phi(q).z changes sign, so any rounding
    # error is amplified without bound near its zeros; that is the map's property, not the op's.
    q, k, v = make_qkv(130, dtype=dtype)
    state = make_state(feature_map, dtype=dtype)
    kw = {"feature_map": feature_map, "normalize": normalize, "output_final_state": True}
    o_ref, s_ref = naive_linear_attention(
        q.double(), k.double(), v.double(), initial_state=tuple(s.double() for s in state), **kw
    )
    for fn, extra in forms(64):
        o, s = fn(q, k, v, initial_state=state, **kw, **extra)
        assert o.dtype == dtype and s[0].dtype == torch.float32  # states accumulate in >= fp32
        assert_close(o_ref, o, rtol, f"{fn.__name__} output")
        assert_states_close(s_ref, s, rtol, f"{fn.__name__} final_state")


@pytest.mark.parametrize("feature_map,normalize", MAPS_NORM)
def test_long_sequence_finite(feature_map, normalize):
    q, k, v = make_qkv(2**16, dtype=torch.float32, b=1, h=1, dk=16, dv=16)
    o, (S, z) = chunk_linear_attention(
        q, k, v, feature_map=feature_map, normalize=normalize, output_final_state=True
    )
    assert torch.isfinite(o).all() and torch.isfinite(S).all() and torch.isfinite(z).all()


# ---- bad input -> clear errors ----------------------------------------------------------------

ALL_FORMS = [naive_linear_attention, chunk_linear_attention, recurrent_linear_attention]


@pytest.mark.parametrize("fn", ALL_FORMS)
def test_errors(fn):
    q, k, v = make_qkv(8)
    with pytest.raises(ValueError, match=r"q must have 4 dims \[B, T, H, D\]"):
        fn(q[0], k, v)
    with pytest.raises(ValueError, match="q and k head dims differ"):
        fn(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same number of heads"):
        fn(q, k[:, :, :2], v[:, :, :2])
    with pytest.raises(ValueError, match="k and v must have the same number of heads"):
        fn(q, k, v[:, :, :2])
    with pytest.raises(ValueError, match="unknown feature_map 'exp'; valid: identity, elu\\+1"):
        fn(q, k, v, feature_map="exp")
    S, z = make_state("elu+1")
    with pytest.raises(ValueError, match=r"initial_state\[0\] \(S\) must have shape \[2, 3, 8, 5"):
        fn(q, k, v, initial_state=(S[..., :4], z))
    with pytest.raises(ValueError, match=r"initial_state\[1\] \(z\) must have shape \[2, 3, 8\]"):
        fn(q, k, v, initial_state=(S, z[..., :4]))
    with pytest.raises(ValueError, match=r"initial_state must be a tuple \(S"):
        fn(q, k, v, initial_state=S)
    # with the Taylor map the state has F = 1 + Dk + Dk^2 features
    with pytest.raises(ValueError, match=r"must have shape \[2, 3, 73, 5\]"):
        fn(q, k, v, feature_map="taylor", initial_state=(S, z))


@pytest.mark.parametrize("chunk_size", [0, -16, 1.5, True])
def test_bad_chunk_size(chunk_size):
    q, k, v = make_qkv(8)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_linear_attention(q, k, v, chunk_size=chunk_size)


def test_step_errors():
    q, k, v = make_qkv(1)
    with pytest.raises(ValueError, match=r"q for one decode step must be \[B, H, D\]"):
        linear_attention_step(q, k[:, 0], v[:, 0], None)
    S, z = make_state("relu")
    with pytest.raises(ValueError, match=r"state\[0\] \(S\) must have shape"):
        linear_attention_step(q[:, 0], k[:, 0], v[:, 0], (S[:1], z), feature_map="relu")
    with pytest.raises(ValueError, match="unknown feature_map"):
        linear_attention_step(q[:, 0], k[:, 0], v[:, 0], None, feature_map="elu")

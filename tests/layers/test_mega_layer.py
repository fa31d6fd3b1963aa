"""The mega layer: Mega-chunk decode == forward with a bounded state, bidirectional form, errors;
the softmax / laplace / relu2 attention functions and the simple / rotary relative-position bias:
one pass == split passes with state == token-by-token decode, the formulas, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from longctx.layers import build
from longctx.layers.mega import laplace
from tests.helpers import assert_close, assert_lm_decodes_like_forward


def make(**kw):
    torch.manual_seed(0)
    m = build("mega", d_model=16, n_heads=2, ema_dim=3, **kw).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m


def test_mega_chunk_decode_equals_forward_and_state_is_bounded() -> None:
    m = make(chunk_size=4)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    ref, _ = m(x)
    state = m.init_state(2)
    y1, state = m(x[:, :6], state)  # a prefill crossing a chunk boundary
    outs = [y1]
    sizes = []
    for t in range(6, 11):
        y, state = m(x[:, t:t + 1], state)
        outs.append(y)
        sizes.append(state.k.shape[1])
    assert_close(ref, torch.cat(outs, 1), rtol=1e-9)
    assert max(sizes) <= 4 and sizes == [3, 4, 1, 2, 3]  # the cache resets at every chunk start
    # n_seen is an int64 counter, not in state_size
    assert m.state_size(2, 11, torch.float64) == state.nbytes() - 8


def test_chunked_attention_does_not_cross_chunks() -> None:
    m = make(chunk_size=4)
    # with the EMA switched off (beta = 0), outputs depend only on their own chunk
    with torch.no_grad():
        m.beta.zero_()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :4] += 1.0
    assert torch.allclose(m(x)[0][:, 4:], m(x2)[0][:, 4:])


def test_errors_and_lm() -> None:
    with pytest.raises(ValueError, match="chunk_size must be an int >= 0"):
        build("mega", d_model=16, n_heads=2, chunk_size=-1)
    with pytest.raises(ValueError, match="configured bidirectional"):
        build("mega", d_model=16, n_heads=2, causal=False).init_state(1)
    assert_lm_decodes_like_forward("mega", {"ema_dim": 4, "chunk_size": 4})


# --- attention functions (softmax / laplace / relu2) and the relative-position bias ---

ACTIVATIONS = ["softmax", "laplace", "relu2"]
BIASES = [("none", {}), ("simple", {"max_positions": 16}), ("rotary", {})]


def _split_and_decode(m, x):
    """Outputs of one pass, of a prefill (7 tokens) + a second prefill (2) + token-by-token decode."""
    ref, _ = m(x)
    state = m.init_state(x.shape[0])
    outs = []
    for s, e in [(0, 7), (7, 9)] + [(t, t + 1) for t in range(9, x.shape[1])]:
        y, state = m(x[:, s:e], state)
        outs.append(y)
    return ref, torch.cat(outs, 1)


@pytest.mark.parametrize("chunk_size", [0, 4])
@pytest.mark.parametrize("bias", BIASES, ids=[b[0] for b in BIASES])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_one_pass_equals_split_equals_decode(activation: str, bias, chunk_size: int) -> None:
    m = make(chunk_size=chunk_size, attention_activation=activation, rel_pos_bias=bias[0], **bias[1])
    x = torch.randn(2, 13, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref, out = _split_and_decode(m, x)
    assert_close(ref, out, rtol=1e-10)
    # the bias and the activation change the output (they are wired in)
    plain, _ = make(chunk_size=chunk_size)(x)
    assert activation == "softmax" and bias[0] == "none" or not torch.allclose(plain, ref)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_finite_and_bias_learns(activation: str) -> None:
    for bias, kw in BIASES[1:]:
        for causal in (True, False):
            m = make(chunk_size=4, attention_activation=activation, rel_pos_bias=bias, causal=causal, **kw)
            x = torch.randn(2, 10, 16, dtype=torch.float64, requires_grad=True)
            m(x)[0].square().sum().backward()
            grads = [x.grad] + [p.grad for p in m.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            pb = m.rel_bias if bias == "simple" else m.rel_rotary
            assert pb.grad.abs().sum() > 0


def _reference_attention(m, q, k, v):
    """The paper's formula, one query at a time: ``f(q_i k_j / tau + b[i - j])`` over ``j <= i``."""
    c = m.config
    T, out = q.shape[1], torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype)
    for i in range(T):
        js = range(i + 1) if c.causal else range(T)
        d = torch.tensor([i - j for j in js])
        b = m.relative_bias(d, q.dtype) if c.rel_pos_bias != "none" else torch.zeros(len(js), dtype=q.dtype)
        s = torch.stack([(q[:, i] * k[:, j]).sum(-1) for j in js], -1)  # [B, n]
        if c.attention_activation == "softmax":
            w = torch.softmax(s / c.z ** 0.5 + b, -1)
        else:
            f = laplace if c.attention_activation == "laplace" else lambda t: torch.relu(t) ** 2
            w = f(s / len(js) + b)
        out[:, i] = (w[..., None] * v[:, list(js)]).sum(1)
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_attention_matches_the_formula(activation: str, causal: bool) -> None:
    for bias, kw in BIASES:
        m = make(attention_activation=activation, rel_pos_bias=bias, causal=causal, **kw)
        g = torch.Generator().manual_seed(5)
        q, k, v = (torch.randn(2, 7, n, dtype=torch.float64, generator=g) for n in (4, 4, 3))
        assert_close(_reference_attention(m, q, k, v), m._attn(q, k, v, 0), rtol=1e-12, name=f"{activation}/{bias}")


def test_laplace_function_and_biases_follow_their_definitions() -> None:
    xs = torch.linspace(-3, 3, 41, dtype=torch.float64)
    mu, sigma = math.sqrt(0.5), math.sqrt(1 / (4 * math.pi))
    ref = torch.tensor([0.5 * (1 + math.erf((x - mu) / (sigma * math.sqrt(2)))) for x in xs.tolist()], dtype=torch.float64)
    assert_close(ref, laplace(xs), rtol=1e-14)
    assert abs(float(laplace(torch.tensor(mu))) - 0.5) < 1e-15
    # simple: b[i, j] = w[i - j] (causal: w[0..M-1]; bidirectional: w[-(M-1)..M-1])
    m = make(rel_pos_bias="simple", max_positions=6)
    d = torch.arange(6)[:, None] - torch.arange(6)[None, :]
    assert m.rel_bias.shape == (6,)
    assert torch.equal(m.relative_bias(d, torch.float64)[3, 1], m.rel_bias[2])
    mb = make(rel_pos_bias="simple", max_positions=6, causal=False)
    assert mb.rel_bias.shape == (11,) and torch.equal(mb.relative_bias(d, torch.float64)[1, 3], mb.rel_bias[5 - 2])
    # rotary: <R_i a, R_j b> with MEGA's rotation of (first half, second half) pairs, base 10000
    mr = make(rel_pos_bias="rotary")
    a, b = mr.rel_rotary.detach()
    half = a.shape[0] // 2
    theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)

    def rot(x, p):
        c, s = torch.cos(p * theta), torch.sin(p * theta)
        return torch.cat([x[:half] * c - x[half:] * s, x[half:] * c + x[:half] * s])

    lit = torch.tensor([[float(rot(a, i) @ rot(b, j)) for j in range(6)] for i in range(6)], dtype=torch.float64)
    assert_close(lit, mr.relative_bias(d, torch.float64).detach(), rtol=1e-12)


def test_attention_options_errors() -> None:
    with pytest.raises(ValueError, match=r"attention_activation must be one of \['softmax', 'laplace', 'relu2'\]"):
        build("mega", d_model=16, n_heads=2, attention_activation="gelu")
    with pytest.raises(ValueError, match="rel_pos_bias must be one of"):
        build("mega", d_model=16, n_heads=2, rel_pos_bias="alibi")
    with pytest.raises(ValueError, match="max_positions must be > 0"):
        build("mega", d_model=16, n_heads=2, rel_pos_bias="simple")
    with pytest.raises(ValueError, match="max_positions=3 must be >= chunk_size=4"):
        build("mega", d_model=16, n_heads=2, rel_pos_bias="simple", chunk_size=4, max_positions=3)
    with pytest.raises(ValueError, match="max_positions must be an int >= 0"):
        build("mega", d_model=16, n_heads=2, max_positions=-2)
    with pytest.raises(ValueError, match="z_dim, or d_model / 4"):
        build("mega", d_model=16, n_heads=2, rel_pos_bias="rotary", z_dim=5)
    assert make(rel_pos_bias="simple", chunk_size=4).rel_bias.shape == (4,)  # max_positions 0: chunk_size
    m = make(rel_pos_bias="simple", max_positions=5)
    m(torch.randn(1, 5, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_positions - 1 = 4, but this attention window reaches distance 5"):
        m(torch.randn(1, 6, 16, dtype=torch.float64))
    state = m.init_state(1)
    _, state = m(torch.randn(1, 5, 16, dtype=torch.float64), state)
    with pytest.raises(ValueError, match="raise max_positions"):  # decode past the learned distances
        m(torch.randn(1, 1, 16, dtype=torch.float64), state)

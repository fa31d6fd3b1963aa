"""deltanet / gated_deltanet layers beyond the generic contract: the layer equals its equations
written out by hand, _inputs feeds the op exactly, Mamba-2 gate init, conv buffer, options."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from longctx.layers import build
from longctx.layers.deltanet import DeltaNet, DeltaNetConfig
from longctx.layers.gated_deltanet import GatedDeltaNet, GatedDeltaNetConfig
from longctx.ops.deltanet import chunk_delta_rule, naive_delta_rule
from longctx.ops.gated_deltanet import chunk_gated_delta_rule, naive_gated_delta_rule
from tests.helpers import assert_close

D, H, B, T = 32, 2, 2, 13
NAMES = ("deltanet", "gated_deltanet")


def make(name: str, dtype=torch.float64, **opts):
    torch.manual_seed(0)
    m = build(name, d_model=D, n_heads=H, chunk_size=4, **opts)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n not in ("A_log", "dt_bias"):  # keep the Mamba-2 init of the decay
                p.normal_(0.0, 0.3)
    return m.to(dtype).eval()


def x_in(b=B, t=T, dtype=torch.float64):
    return torch.randn(b, t, D, generator=torch.Generator().manual_seed(3), dtype=dtype)


def by_hand(m, x):
    """The layer's equations written out independently: projections, causal conv via padding,
    SiLU, L2 norm, the naive op, norm (and gate), output projection."""
    c = m.config
    qkv = torch.cat([m.wq(x), m.wk(x), m.wv(x)], -1)
    K = c.conv_size
    qkv = F.conv1d(F.pad(qkv.transpose(1, 2), (K - 1, 0)), m.conv.weight,
                   groups=qkv.shape[-1]).transpose(1, 2)
    q, k, v = F.silu(qkv).split([c.key_dim, c.key_dim, c.value_dim], -1)
    q, k, v = (t.reshape(*t.shape[:2], c.n_heads, -1) for t in (q, k, v))
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    beta = torch.sigmoid(m.wb(x)) * (2 if c.allow_neg_eigval else 1)
    if isinstance(m, GatedDeltaNet):
        g = -torch.exp(m.A_log) * F.softplus(m.wa(x) + m.dt_bias)
        o, _ = naive_gated_delta_rule(q, k, v, g, beta)
        gate = F.silu(m.wg(x)).reshape(*x.shape[:2], c.n_heads, -1)
        return m.wo((m.norm(o) * gate).flatten(2))
    o, _ = naive_delta_rule(q, k, v, beta)
    return m.wo(m.norm(o).flatten(2))


@pytest.mark.parametrize("neg", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_layer_equals_equations(name, neg):
    m = make(name, allow_neg_eigval=neg)
    x = x_in()
    y, _ = m(x)
    assert_close(by_hand(m, x), y, 1e-9)


@pytest.mark.parametrize("neg", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_inputs_feed_the_op(name, neg):
    m = make(name, allow_neg_eigval=neg)
    inputs, conv = m._inputs(x_in(), None)
    assert conv is None
    op = chunk_gated_delta_rule if name == "gated_deltanet" else chunk_delta_rule
    expected = ["q", "k", "v", "g", "beta"] if name == "gated_deltanet" else ["q", "k", "v", "beta"]
    assert list(inputs) == expected
    o, _ = op(**inputs)  # the op's own checks: unit keys, beta range, g <= 0
    assert_close(torch.ones(B, T, H), inputs["q"].norm(dim=-1), 1e-12, "|q|")
    assert 0 < inputs["beta"].min() and inputs["beta"].max() < (2 if neg else 1)
    if neg:
        assert inputs["beta"].max() > 1  # negative eigenvalues actually used
    if name == "gated_deltanet":
        assert inputs["g"].shape == (B, T, H) and (inputs["g"] <= 0).all()
    y = m._output(o, x_in(), inputs)
    assert_close(m(x_in())[0], y, 1e-12, "_inputs -> op -> _output")


def test_gate_init_is_mamba2():
    torch.manual_seed(1)
    m = GatedDeltaNet(GatedDeltaNetConfig(d_model=64, n_heads=16))
    A = m.A_log.exp()
    dt = F.softplus(m.dt_bias)
    assert (A >= 1).all() and (A <= 16).all()
    assert (dt >= 1e-3 - 1e-9).all() and (dt <= 1e-1 + 1e-9).all()
    assert torch.isfinite(m.A_log).all() and torch.isfinite(m.dt_bias).all()


def test_defaults_follow_papers():
    dn, gdn = DeltaNetConfig(), GatedDeltaNetConfig()
    assert dn.conv_size == gdn.conv_size == 4
    assert (dn.key_dim, dn.value_dim) == (dn.d_model, dn.d_model)
    assert gdn.value_dim == 2 * gdn.key_dim
    assert not dn.allow_neg_eigval


@pytest.mark.parametrize("name", NAMES)
def test_conv_buffer_holds_last_inputs(name):
    m = make(name)
    x = x_in()
    _, state = m(x, m.init_state(B))
    c = m.config
    qkv = torch.cat([m.wq(x), m.wk(x), m.wv(x)], -1)
    assert state.conv.shape == (B, c.conv_size - 1, c.conv_channels)
    assert torch.equal(state.conv, qkv[:, -(c.conv_size - 1):])


@pytest.mark.parametrize("name", NAMES)
def test_state_size_counts_S_and_conv(name):
    m = make(name)
    c = m.config
    dk, dv = c.key_dim // H, c.value_dim // H
    want = 5 * (H * dk * dv + (c.conv_size - 1) * (2 * c.key_dim + c.value_dim)) * 2
    assert m.state_size(5, 1000, dtype=torch.bfloat16) == want


@pytest.mark.parametrize("name", NAMES)
def test_zero_input_is_fine(name):
    """x = 0 (e.g. padding) gives all-zero keys: a no-op write, accepted by the op's key check."""
    m = make(name)
    y, state = m(torch.zeros(B, 6, D, dtype=torch.float64), m.init_state(B))
    assert torch.isfinite(y).all() and torch.equal(state.S, torch.zeros_like(state.S))


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    m = make(name).train()
    y, _ = m(x_in())
    y.square().sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_layer_close_to_float64(name):
    m64 = make(name)
    m16 = copy.deepcopy(m64).to(torch.bfloat16)
    x = x_in()
    ref, _ = m64(x)
    y, _ = m16(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert_close(ref, y, 5e-2, "bf16 layer")
    # bf16 decode continues from a prefill
    _, s = m16(x[:, :7].to(torch.bfloat16), m16.init_state(B))
    y1, s = m16(x[:, 7:8].to(torch.bfloat16), s)
    assert torch.isfinite(y1).all() and s.S.dtype == torch.float32


@pytest.mark.parametrize("bad", [{"conv_size": 1}, {"expand_k": 0.3}, {"norm_eps": 0.0},
                                 {"chunk_size": 0}])
def test_bad_config(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DeltaNetConfig(d_model=D, n_heads=H, **bad)
    with pytest.raises(ValueError, match="dt_min"):
        GatedDeltaNetConfig(d_model=D, n_heads=H, dt_min=0.5, dt_max=0.1)
    with pytest.raises(ValueError, match="A_init_range"):
        GatedDeltaNetConfig(d_model=D, n_heads=H, A_init_range=(0.0, 16.0))


def test_subclass_hooks_exist():
    """The Log-Linear wrappers subclass these layers through _inputs / _mix / _output."""
    for cls in (DeltaNet, GatedDeltaNet):
        for hook in ("_inputs", "_mix", "_output"):
            assert callable(getattr(cls, hook))

"""Mamba-2 layer: the block as the paper draws it (a reference built from naive_ssd), the init,
the ``_inputs`` / ``_op`` / ``_output`` hooks, groups, bf16 decode state, config errors.
(The generic layer contract runs on it in test_mixers.py.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longctx.layers import build
from longctx.layers.mamba2 import Mamba2, Mamba2Config
from longctx.ops.mamba2 import chunk_ssd, naive_ssd
from tests.helpers import assert_close

F64 = torch.float64
D_MODEL, N_HEADS, B, T = 16, 4, 2, 13
OPTS = {"d_state": 4, "n_groups": 2, "chunk_size": 4}


def make(dtype=F64, **extra) -> Mamba2:
    torch.manual_seed(0)
    m = build("mamba2", d_model=D_MODEL, n_heads=N_HEADS, **{**OPTS, **extra})
    with torch.no_grad():  # move every parameter off its init so no path is trivial
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.to(dtype).eval()


def inputs(t: int = T, b: int = B, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=F64)


def reference_block(m: Mamba2, x: torch.Tensor) -> torch.Tensor:
    """The Mamba-2 block of §7.1 / Fig. 6 written out plainly, with the recurrent naive_ssd."""
    c = m.config
    Bsz, L, _ = x.shape
    d_in, GN, H, K = c.d_inner, c.n_groups * c.d_state, c.n_heads, c.d_conv
    z, xBC, dt = (x @ m.in_proj.weight.T).split([d_in, d_in + 2 * GN, H], dim=-1)
    conv = F.conv1d(F.pad(xBC.transpose(1, 2), (K - 1, 0)), m.conv1d.weight, m.conv1d.bias,
                    groups=xBC.shape[-1])
    xs, Bm, Cm = F.silu(conv.transpose(1, 2)).split([d_in, GN, GN], dim=-1)
    y, _ = naive_ssd(
        xs.reshape(Bsz, L, H, -1), F.softplus(dt + m.dt_bias), -torch.exp(m.A_log),
        Bm.reshape(Bsz, L, c.n_groups, -1), Cm.reshape(Bsz, L, c.n_groups, -1), D=m.D,
    )
    g = y.reshape(Bsz, L, d_in) * F.silu(z)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + c.norm_eps) * m.norm.weight
    return g @ m.out_proj.weight.T


@pytest.mark.parametrize("extra", [{}, {"n_groups": 1}, {"d_conv": 2}, {"expand": 1}])
def test_matches_reference_block(extra) -> None:
    m = make(**extra)
    x = inputs()
    y, state = m(x)
    assert state is None
    assert_close(reference_block(m, x), y, 1e-12)


def test_init_follows_the_paper() -> None:
    torch.manual_seed(0)
    c = Mamba2Config(d_model=64, n_heads=64)  # 64 heads to see the spread of the init
    m = Mamba2(c)
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= c.dt_min * (1 - 1e-6) and dt.max() <= c.dt_max * (1 + 1e-6)
    assert dt.min() < 3e-3 and dt.max() > 3e-2  # log-uniform over two decades
    A = -torch.exp(m.A_log)
    assert (-A).min() >= 1.0 - 1e-6 and (-A).max() <= 16.0 + 1e-6 and (-A).max() > 8
    assert torch.equal(m.D, torch.ones(64))
    assert m.in_proj.weight.shape == (2 * 128 + 2 * 16 + 64, 64)  # [z, x, B, C, dt] x d_model
    assert m.conv1d.weight.shape == (128 + 2 * 16, 1, 4) and m.conv1d.bias is not None
    assert c.ssd_head_dim == 2 and m.out_proj.weight.shape == (64, 128)


def test_hooks_compose_to_forward() -> None:
    """``_inputs`` gives exactly chunk_ssd's arguments; _op and _output are what forward runs."""
    m = make()
    c = m.config
    x = inputs()
    inp, conv = m._inputs(x, None)
    assert conv is None
    shapes = {k: tuple(v.shape) for k, v in inp.items()}
    P, G, N = c.ssd_head_dim, c.n_groups, c.d_state
    assert shapes == {"x": (B, T, N_HEADS, P), "dt": (B, T, N_HEADS), "A": (N_HEADS,),
                      "B": (B, T, G, N), "C": (B, T, G, N)}
    o, _ = chunk_ssd(**inp, chunk_size=c.chunk_size)
    assert_close(m(x)[0], m._output(o, x, inp), 0.0)
    # with a state: the new conv buffer holds the last d_conv - 1 conv inputs
    inp_s, conv = m._inputs(x, m.init_state(B))
    assert conv.shape == (B, c.d_conv - 1, c.conv_dim)
    xBC = x @ m.in_proj.weight[c.d_inner:c.d_inner + c.conv_dim].T
    assert_close(xBC[:, -(c.d_conv - 1):], conv, 1e-14, "conv buffer")
    o_s, ssm = m._op(inp_s, m.init_state(B))
    assert ssm.shape == (B, N_HEADS, P, N)
    assert_close(o, o_s, 1e-12, "op with an empty state")


@pytest.mark.parametrize("extra", [{"n_groups": 4}, {"d_conv": 1}, {"d_conv": 6}])
def test_decode_equals_forward(extra) -> None:
    m = make(**extra)
    x = inputs()
    ref, _ = m(x)
    y0, state = m(x[:, :2], m.init_state(B))
    outs = [y0]
    for t in range(2, T):
        y, state = m(x[:, t:t + 1], state)
        outs.append(y)
    assert_close(ref, torch.cat(outs, 1), 1e-10)


def test_bfloat16_decode_state() -> None:
    """bf16 model: the SSD state stays float32, its size is what state_size says, and decoding
    tracks the float64 model."""
    m64 = make()
    m16 = make(torch.bfloat16)
    x = inputs()
    ref, _ = m64(x)
    state = m16.init_state(B)
    assert state.ssm.dtype == torch.float32 and state.conv.dtype == torch.bfloat16
    assert state.nbytes() == m16.state_size(B, T, dtype=torch.bfloat16)
    outs = []
    for t in range(T):
        y, state = m16(x[:, t:t + 1].bfloat16(), state)
        outs.append(y)
    assert state.ssm.dtype == torch.float32 and state.conv.dtype == torch.bfloat16
    assert state.nbytes() == m16.state_size(B, T, dtype=torch.bfloat16)
    assert_close(ref, torch.cat(outs, 1), 3e-2, "bf16 decode")  # measured 7.5e-3


def test_every_parameter_gets_a_gradient() -> None:
    m = make().train()
    y, _ = m(inputs())
    (y * torch.randn_like(y)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_long_prefill_float32_is_finite() -> None:
    m = make(torch.float32, chunk_size=64)
    x = inputs(t=2048, b=1).float() * 3
    y, state = m(x, m.init_state(1, dtype=torch.float32))
    assert torch.isfinite(y).all() and torch.isfinite(state.ssm).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_groups": 3}, "n_groups=3 must divide n_heads=4"),
        ({"d_conv": 0}, "d_conv must be a positive integer"),
        ({"expand": 1.5}, "expand must be a positive integer"),
        ({"dt_min": 0.2}, "0 < dt_min <= dt_max"),
        ({"A_init_min": 0.0}, "0 < A_init_min <= A_init_max"),
        ({"norm_eps": 0.0}, "norm_eps must be > 0"),
        ({"head_size": -1}, "head_size must be a non-negative integer"),
        ({"head_size": 7}, "head_size=7 must divide d_inner"),
    ],
)
def test_config_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Mamba2Config(d_model=D_MODEL, n_heads=N_HEADS, **kwargs)


def test_state_size_counts_conv_and_ssm() -> None:
    c = Mamba2Config(d_model=D_MODEL, n_heads=N_HEADS, d_state=4, n_groups=2)
    m = Mamba2(c)
    conv = (c.d_conv - 1) * (c.d_inner + 2 * 2 * 4)
    ssm = N_HEADS * c.ssd_head_dim * 4
    assert m.state_size(3, 10**6) == 3 * 4 * (conv + ssm)
    assert math.prod(m.init_state(3).ssm.shape) == 3 * ssm


def test_head_size_sets_the_heads() -> None:
    # the paper's (and zoology's) P = 64: n_heads = expand * d_model / 64, whatever the model passes
    c = Mamba2Config(d_model=128, n_heads=1, head_size=64)
    assert (c.n_heads, c.ssd_head_dim) == (4, 64)
    assert Mamba2Config(d_model=64, n_heads=1, head_size=64, expand=1).n_heads == 1
    m = build("mamba2", d_model=16, n_heads=1, head_size=8, d_state=4)
    assert m.init_state(2).ssm.shape[1:3] == (4, 8)

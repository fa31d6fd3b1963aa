"""Mamba-1 mixer: published initialisation, equality with a by-hand composition of the block
(Gu & Dao 2023, Fig. 3) over the naive scan, decode == forward, config errors, the subclass hooks."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from longctx.layers import build
from longctx.layers.mamba import Mamba, MambaConfig, MambaState
from longctx.ops.mamba import chunk_selective_scan, naive_selective_scan
from tests.helpers import assert_close

F64 = torch.float64


def make(dtype=F64, randomize=True, **kw) -> Mamba:
    torch.manual_seed(0)
    m = Mamba(MambaConfig(**{"d_model": 24, "n_heads": 2, "d_state": 5, "chunk_size": 8, **kw}))
    if randomize:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    return m.to(dtype)


def x_of(b=2, t=21, d=24, dtype=F64, seed=1):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def reference_block(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """The block written out plainly: one in_proj, a padded conv truncated to T, the naive scan."""
    c = m.config
    T = x.shape[1]
    xs, z = m.in_proj(x).chunk(2, dim=-1)  # [B, T, E] each
    conv = F.conv1d(xs.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=c.d_conv - 1,
                    groups=c.d_inner)[..., :T]  # causal: left context only
    u = F.silu(conv.transpose(1, 2))
    dt_low, Bm, Cm = m.x_proj(u).split([c.rank, c.d_state, c.d_state], dim=-1)
    dt = F.softplus(m.dt_proj(dt_low))
    y, _ = naive_selective_scan(u, dt, -torch.exp(m.A_log), Bm, Cm, D=m.D)
    return m.out_proj(y * F.silu(z))


def test_registered_and_built_by_name():
    m = build("mamba", d_model=32, n_heads=4)
    assert isinstance(m, Mamba) and m.config.d_inner == 64 and m.config.rank == 2


def test_published_initialisation():
    m = Mamba(MambaConfig(d_model=40, n_heads=4))
    c = m.config
    assert (c.d_state, c.expand, c.d_conv, c.d_inner, c.rank) == (16, 2, 4, 80, math.ceil(40 / 16))
    assert m.in_proj.weight.shape == (160, 40) and m.in_proj.bias is None
    assert m.conv1d.weight.shape == (80, 1, 4) and m.conv1d.bias is not None
    assert m.x_proj.weight.shape == (3 + 32, 80) and m.dt_proj.weight.shape == (80, 3)
    assert torch.allclose(-torch.exp(m.A_log), -torch.arange(1, 17.0).expand(80, 16))  # S4D-real
    assert torch.equal(m.D, torch.ones(80))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert dt.log().mean().item() == pytest.approx(math.log(1e-2), abs=0.5)  # log-uniform centre


def test_n_heads_is_unused():
    ys = []
    for n_heads in (1, 4):
        torch.manual_seed(0)
        ys.append(Mamba(MambaConfig(d_model=24, n_heads=n_heads)).double()(x_of())[0])
    assert torch.equal(*ys)


@pytest.mark.parametrize("kw", [{}, {"bias": True, "conv_bias": False}, {"d_conv": 1},
                                {"d_conv": 2, "dt_rank": 5, "expand": 1}])
def test_forward_equals_plain_block(kw):
    m = make(**kw)
    x = x_of()
    y, state = m(x)
    assert state is None
    assert_close(reference_block(m, x), y, 1e-9)


@pytest.mark.parametrize("kw", [{"d_conv": 1}, {"d_conv": 6}])
def test_decode_equals_forward_other_kernels(kw):
    m = make(**kw)
    x = x_of()
    ref, _ = m(x)
    y, state = m(x[:, :7], m.init_state(2))
    outs = [y]
    for t in range(7, x.shape[1]):
        y, state = m(x[:, t:t + 1], state)
        outs.append(y)
    assert_close(ref, torch.cat(outs, 1), 1e-9)
    assert state.conv.shape == (2, kw["d_conv"] - 1, m.config.d_inner)


def test_decode_at_published_init_across_chunks():
    """Default chunk (64): a prefill of 67 tokens crosses a chunk, then 3 decode steps."""
    torch.manual_seed(0)
    m = Mamba(MambaConfig(d_model=16, n_heads=1)).double()
    x = x_of(t=70, d=16)
    ref, _ = m(x)
    y, state = m(x[:, :67], m.init_state(2))
    outs = [y]
    for t in range(67, 70):
        y, state = m(x[:, t:t + 1], state)
        outs.append(y)
    assert_close(ref, torch.cat(outs, 1), 1e-9)


def test_state_shapes_and_size():
    m = make()
    c = m.config
    s = m.init_state(3, dtype=torch.float32)
    assert isinstance(s, MambaState) and s.mixer == "mamba"
    assert s.conv.shape == (3, c.d_conv - 1, c.d_inner) and s.h.shape == (3, c.d_inner, c.d_state)
    assert m.state_size(3, 1000) == 3 * c.d_inner * (c.d_conv - 1 + c.d_state) * 4 == s.nbytes()


def test_conv_buffer_does_not_keep_the_prefill_alive():
    m = make()
    _, state = m(x_of(t=50), m.init_state(2))
    assert state.conv.untyped_storage().nbytes() == state.conv.numel() * state.conv.element_size()
    assert state.h.untyped_storage().nbytes() == state.h.numel() * state.h.element_size()


def test_inputs_hook_matches_the_op_signature():
    """Subclasses call chunk_selective_scan(**inputs): the keys are its tensor arguments."""
    m = make()
    x = x_of()
    inputs, buf = m._inputs(x, None)
    assert buf is None
    params = inspect.signature(chunk_selective_scan).parameters
    assert set(inputs) == {"u", "dt", "A", "B", "C", "D"} <= set(params)
    E, N = m.config.d_inner, m.config.d_state
    assert inputs["u"].shape == inputs["dt"].shape == (2, 21, E)
    assert inputs["B"].shape == inputs["C"].shape == (2, 21, N) and inputs["A"].shape == (E, N)
    o, _ = chunk_selective_scan(**inputs)
    assert_close(m(x)[0], m._output(o, x, inputs), 1e-12)
    _, buf = m._inputs(x, m.init_state(2))
    assert buf.shape == (2, m.config.d_conv - 1, E)


def test_gradients_reach_every_parameter():
    m = make(dtype=torch.float32)
    y, _ = m(x_of(dtype=torch.float32))
    y.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_float32_and_bfloat16():
    m64 = make()
    x = x_of(t=40)
    ref, _ = m64(x)
    y32, _ = make(torch.float32)(x.float())
    assert y32.dtype == torch.float32
    assert_close(ref, y32, 1e-5, "float32")
    y16, s16 = make(torch.bfloat16)(x.bfloat16(), make(torch.bfloat16).init_state(2))
    assert y16.dtype == torch.bfloat16 and s16.h.dtype == torch.float32  # the scan state in fp32
    assert_close(ref, y16, 5e-2, "bfloat16")


def test_long_sequence_finite_at_published_init():
    torch.manual_seed(0)
    m = Mamba(MambaConfig(d_model=16, n_heads=1))
    y, _ = m(torch.randn(1, 4096, 16))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("kw,match", [
    ({"d_state": 0}, "d_state must be a positive integer"),
    ({"expand": 0}, "expand must be a positive integer"),
    ({"d_conv": 0}, "d_conv must be a positive integer"),
    ({"dt_rank": 0}, "dt_rank must be a positive integer"),
    ({"chunk_size": -1}, "chunk_size must be a positive integer"),
    ({"dt_min": 0.1, "dt_max": 0.01}, "need 0 < dt_min <= dt_max"),
    ({"dt_min": 0.0}, "need 0 < dt_min <= dt_max"),
    ({"n_heads": 5}, "n_heads=5 must divide d_model=24"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        MambaConfig(**{"d_model": 24, "n_heads": 2, **kw})

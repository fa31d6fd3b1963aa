"""The fused DeltaNet / Gated DeltaNet / Mamba-2 / GLA layer steps (``triton_layer_step``) against the
layers' own PyTorch decode step: outputs, the new state S and the new conv buffer over several steps,
functional by default and in place inside ``inplace_decode``. Float64 in Triton's CPU interpreter
(exact to rounding); float32 on a GPU (marker ``gpu``)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from tests.ops.triton_support import DEVICE, HAS_TRITON, ON_CUDA  # first: picks the interpreter

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
DTYPE = torch.float32 if ON_CUDA else torch.float64
TOL = 1e-4 if ON_CUDA else 1e-10
MARKS = [pytest.mark.gpu] if ON_CUDA else []


def _layer(mixer: str, **kw):
    from longctx.layers.deltanet import DeltaNet, DeltaNetConfig
    from longctx.layers.gated_deltanet import GatedDeltaNet, GatedDeltaNetConfig
    from longctx.layers.gla import GatedLinearAttention, GLAConfig
    from longctx.layers.mamba2 import Mamba2, Mamba2Config

    cls, cfg = {"deltanet": (DeltaNet, DeltaNetConfig), "gated_deltanet": (GatedDeltaNet, GatedDeltaNetConfig),
                "mamba2": (Mamba2, Mamba2Config), "gla": (GatedLinearAttention, GLAConfig)}[mixer]
    torch.manual_seed(0)
    layer = cls(cfg(**kw)).to(DEVICE, DTYPE).eval()
    with torch.no_grad():  # an RMSNorm weight away from 1, so the kernel must read it
        layer.norm.weight.uniform_(0.5, 1.5)
    return layer


def _steps(layer, backend: str, x, state, n: int):
    from longctx.ops.common.backend import use_backend

    ys = []
    with torch.no_grad(), use_backend(backend):
        for t in range(n):
            y, state = layer(x[:, t:t + 1], state)
            ys.append(y)
    return torch.cat(ys, 1), state


def _check_against_torch(layer, d_model: int, seed: int, state_names: tuple[str, ...]) -> None:
    """Prefilled by the chunk form over 6 tokens (batch 2), then 3 one-token steps: the fused step
    ("triton") == the layer's PyTorch step: outputs and every named state tensor."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 9, d_model, generator=gen, dtype=DTYPE).to(DEVICE)
    with torch.no_grad():
        _, state = layer(x[:, :6], layer.init_state(2, DEVICE))
    ref, ref_state = _steps(layer, "torch", x[:, 6:], state, 3)
    out, new_state = _steps(layer, "triton", x[:, 6:], state, 3)
    assert_close(ref, out, TOL, "y")
    for name in state_names:
        assert_close(getattr(ref_state, name), getattr(new_state, name), TOL, name)


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize(("d_model", "n_heads", "conv_size", "neg"), [
    pytest.param(32, 2, 4, False, marks=MARKS), pytest.param(24, 3, 2, True, marks=MARKS),
    pytest.param(40, 1, 3, False, marks=MARKS)])
def test_fused_step_matches_the_layer_step(mixer, d_model, n_heads, conv_size, neg) -> None:
    """Prefilled by the chunk form, then 3 one-token steps: fused == PyTorch (head dims 16, 8 and
    40 (not a power of two), conv taps 4 / 2 / 3, beta in (0, 1) and (0, 2))."""
    layer = _layer(mixer, d_model=d_model, n_heads=n_heads, conv_size=conv_size, allow_neg_eigval=neg)
    _check_against_torch(layer, d_model, 1, ("S", "conv"))


@pytest.mark.parametrize(("d_model", "n_heads", "n_groups", "d_state", "d_conv"), [
    pytest.param(16, 2, 1, 16, 4, marks=MARKS), pytest.param(24, 4, 2, 8, 2, marks=MARKS),
    pytest.param(20, 5, 5, 12, 3, marks=MARKS), pytest.param(16, 1, 1, 16, 1, marks=MARKS)])
def test_fused_mamba2_step_matches_the_layer_step(d_model, n_heads, n_groups, d_state, d_conv) -> None:
    """Mamba-2: prefilled by the chunk form, then 3 one-token steps: fused == PyTorch (head dims
    16 / 12 / 8 / 32, one group, groups of 2 heads, a group per head; state sizes 16 / 8 / 12
    (not a power of two); conv taps 4 / 2 / 3 / 1)."""
    layer = _layer("mamba2", d_model=d_model, n_heads=n_heads, n_groups=n_groups, d_state=d_state,
                   d_conv=d_conv)
    with torch.no_grad():  # a skip and a conv bias that matter
        layer.D.uniform_(-1, 1)
        layer.conv1d.bias.uniform_(-0.5, 0.5)
    _check_against_torch(layer, d_model, 2, ("ssm", "conv"))


@pytest.mark.parametrize(("d_model", "n_heads", "expand_k", "gate_rank"), [
    pytest.param(32, 2, 0.5, 16, marks=MARKS), pytest.param(24, 3, 1.0, 4, marks=MARKS),
    pytest.param(40, 1, 0.5, 3, marks=MARKS)])
def test_fused_gla_step_matches_the_layer_step(d_model, n_heads, expand_k, gate_rank) -> None:
    """GLA: prefilled by the chunk form, then 3 one-token steps: fused == PyTorch (key / value head
    dims 8 / 16, 8 / 8, 20 / 40; gate ranks 16 / 4 / 3)."""
    layer = _layer("gla", d_model=d_model, n_heads=n_heads, expand_k=expand_k, gate_rank=gate_rank)
    _check_against_torch(layer, d_model, 3, ("S",))


@pytest.mark.parametrize("mixer", [pytest.param(m, marks=MARKS) for m in ("deltanet", "gated_deltanet")])
def test_functional_by_default_in_place_inside_inplace_decode(mixer) -> None:
    """The step leaves its input state alone (speculative decoding keeps old states), except
    inside ``inplace_decode`` (a CUDA graph's static buffers), where it writes S and the conv
    buffer where they lie, with the same values."""
    from longctx.ops.common.backend import inplace_decode

    layer = _layer(mixer, d_model=32, n_heads=2)
    x = torch.randn(1, 4, 32, dtype=DTYPE, device=DEVICE)
    with torch.no_grad():
        _, state = layer(x[:, :3], layer.init_state(1, DEVICE))
    before = (state.S.clone(), state.conv.clone())
    y, new = _steps(layer, "triton", x[:, 3:], state, 1)
    assert torch.equal(state.S, before[0]) and torch.equal(state.conv, before[1])
    assert new.S.data_ptr() != state.S.data_ptr()
    with inplace_decode():
        y2, new2 = _steps(layer, "triton", x[:, 3:], state, 1)
    assert new2.S is state.S and new2.conv is state.conv
    assert torch.equal(y, y2) and torch.equal(new.S, state.S) and torch.equal(new.conv, state.conv)


@pytest.mark.parametrize("inplace", [pytest.param(b, marks=MARKS) for b in (False, True)])
def test_mamba2_state_in_place_only_inside_inplace_decode(inplace: bool) -> None:
    """Mamba-2's SSD state follows the same rule; its conv buffer is always new (heads of a group
    share their B / C channels)."""
    from contextlib import nullcontext

    from longctx.ops.common.backend import inplace_decode

    layer = _layer("mamba2", d_model=16, n_heads=2)
    x = torch.randn(1, 4, 16, dtype=DTYPE, device=DEVICE)
    with torch.no_grad():
        _, state = layer(x[:, :3], layer.init_state(1, DEVICE))
    ref, ref_state = _steps(layer, "torch", x[:, 3:], state, 1)
    before = state.ssm.clone()
    with inplace_decode() if inplace else nullcontext():
        y, new = _steps(layer, "triton", x[:, 3:], state, 1)
    assert (new.ssm is state.ssm) == inplace and new.conv is not state.conv
    assert torch.equal(state.ssm, new.ssm if inplace else before)
    assert_close(ref, y, TOL, "y")
    assert_close(ref_state.ssm, new.ssm, TOL, "ssm")


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet", "mamba2", "gla"])
def test_not_taken_with_a_gradient_or_under_auto(mixer) -> None:
    """With a gradient wanted the layer keeps its differentiable PyTorch step; "auto" picks the
    kernel for no tensors yet (CPU ones never; CUDA ones once it has passed on a GPU)."""
    from longctx.ops.common.backend import GPU_VERIFIED, GRAPH_VERIFIED_STEPS, use_backend

    layer = _layer(mixer, d_model=32, n_heads=2)
    x = torch.randn(1, 1, 32, dtype=DTYPE, device=DEVICE)
    state = layer.init_state(1, DEVICE)
    with use_backend("triton"):
        assert layer._fused_step(x, state) is None  # parameters require grad, grad mode on
    with torch.no_grad(), use_backend("auto"):
        assert layer._fused_step(x, state) is None
    with torch.no_grad(), use_backend("triton"):
        assert layer._fused_step(x, state) is not None
    for op in ("deltanet_layer_step", "gated_deltanet_layer_step", "mamba2_layer_step", "gla_layer_step"):
        # verified inside a CUDA graph (the graph test), never picked eagerly by "auto"
        assert op in GRAPH_VERIFIED_STEPS and op not in GPU_VERIFIED


def test_cached_input_weight_follows_changes_to_the_weights() -> None:
    """The stacked input weight is rebuilt once a projection changes in place (an optimiser step)."""
    layer = _layer("gated_deltanet", d_model=32, n_heads=2)
    w = layer._in_weight()
    assert layer._in_weight() is w  # cached
    c = layer.config
    assert w.shape == (2 * c.key_dim + 2 * c.value_dim + 2 * c.n_heads, 32)
    with torch.no_grad():
        layer.wg.weight.add_(1.0)
    w2 = layer._in_weight()
    assert w2 is not w and torch.equal(w2[-c.value_dim:], layer.wg.weight)


def test_unsupported_heads_fall_back() -> None:
    from longctx.ops.common.backend import layer_step_unsupported

    assert layer_step_unsupported(128, 256, 4) is None  # Gated DeltaNet's heads at expand_v = 2
    assert "over the" in layer_step_unsupported(256, 256, 4)
    assert "conv_size" in layer_step_unsupported(64, 64, 17)
    assert layer_step_unsupported(40, 40, 4) is None  # padded to 64 x 64

"""Log-linear mixers beyond the generic contract (tests/layers/test_mixers.py): lambda == 1 gives
the base layer, the level weights, O(log T) decode memory, the length limit, config errors."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from longctx.layers.log_linear import LogLinearAttentionConfig
from tests.helpers import assert_close

D_MODEL, N_HEADS, B, T = 32, 2, 2, 19
# log-linear mixer -> (base mixer, options shared by both)
PAIRS = {
    "log_linear_attention": ("linear_attention", {"normalize": False, "feature_map": "elu+1"}),
    "log_linear_gla": ("gla", {}),
    "log_linear_mamba2": ("mamba2", {"d_state": 8}),
    "log_linear_gated_deltanet": ("gated_deltanet", {}),
}


def make(name: str, **opts) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(name, d_model=D_MODEL, n_heads=N_HEADS, chunk_size=4, **opts)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.double().eval()


def x_in(t: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, t, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", list(PAIRS))
def test_lambda_one_is_the_base_layer(name, monkeypatch):
    base_name, opts = PAIRS[name]
    m = make(name, **opts)
    base = make(base_name, **opts)
    missing, unexpected = base.load_state_dict(m.state_dict(), strict=False)
    assert not missing and unexpected == ["lambda_proj.weight"]
    monkeypatch.setattr(m, "_lambda", lambda x: torch.ones(*x.shape[:2], N_HEADS, 21, dtype=x.dtype))
    x = x_in()
    assert_close(base(x)[0], m(x)[0], 1e-9, "training form")
    # decode: prefill 5 tokens, then one token at a time
    s, sb = m.init_state(B), base.init_state(B)
    y, s = m(x[:, :5], s)
    yb, sb = base(x[:, :5], sb)
    outs, outs_b = [y], [yb]
    for t in range(5, T):
        y, s = m(x[:, t : t + 1], s)
        yb, sb = base(x[:, t : t + 1], sb)
        outs.append(y)
        outs_b.append(yb)
    assert_close(torch.cat(outs_b, 1), torch.cat(outs, 1), 1e-9, "decode")


@pytest.mark.parametrize("name", list(PAIRS))
def test_level_weights_are_non_negative_and_used(name):
    m = make(name)
    x = x_in()
    lam = m._lambda(x)
    assert lam.shape == (B, T, N_HEADS, m.config.max_levels) and (lam >= 0).all()
    y, _ = m(x)
    y.square().sum().backward()
    assert m.lambda_proj.weight.grad is not None and m.lambda_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(PAIRS))
def test_decode_memory_grows_as_log_t(name):
    m = make(name)
    state = m.init_state(1)
    x = x_in(40)[:1]
    for t in range(40):
        _, state = m(x[:, t : t + 1], state)
        assert state.S.shape[1] == (t + 1).bit_length()  # floor(log2 t) + 1 levels
        floats = sum(v.numel() * v.element_size() for v in state.tensors().values()
                     if v.is_floating_point())
        assert floats == m.state_size(1, t + 1, dtype=torch.float64)
    assert int(state.t) == 40 and state.t.dtype == torch.int64


@pytest.mark.parametrize("name", list(PAIRS))
def test_sequence_longer_than_max_levels_is_refused(name):
    m = make(name, max_levels=3)  # positions up to t = 3 (levels 0..2)
    m(x_in(4))
    with pytest.raises(ValueError, match=r"position t = 4 needs 4 Fenwick levels but max_levels = 3"):
        m(x_in(5))
    _, state = m(x_in(4), m.init_state(B))
    with pytest.raises(ValueError, match="max_levels = 3"):
        m(x_in(1), state)  # decoding the 5th token


def test_log_linear_attention_refuses_normalize():
    with pytest.raises(ValueError, match="normalize=True is not supported: log-linear attention"):
        LogLinearAttentionConfig(d_model=32, n_heads=2, normalize=True)
    assert LogLinearAttentionConfig().normalize is False


@pytest.mark.parametrize("name", list(PAIRS))
def test_config_errors(name):
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        build(name, d_model=32, n_heads=2, chunk_size=12)
    with pytest.raises(ValueError, match="max_levels must be a positive integer"):
        build(name, d_model=32, n_heads=2, max_levels=0)


@pytest.mark.parametrize("name", list(PAIRS))
def test_bfloat16_layer_runs(name):
    m = make(name).to(torch.bfloat16)
    x = x_in().to(torch.bfloat16)
    y, _ = m(x)
    y_ref, _ = make(name)(x.double())
    assert y.dtype == torch.bfloat16
    assert_close(y_ref, y, 5e-2)
    _, state = m(x, m.init_state(B))
    assert state.S.dtype == torch.float32  # level states in >= float32

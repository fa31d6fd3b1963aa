"""The rwkv4 and rwkv6 layers: token shift, decays, RWKV-6 against the paper's equations written
as a token loop, configuration errors, channel mixing, an LM decodes (the layer contract itself:
tests/layers/test_mixers.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.layers import build
from longctx.layers.rwkv import SHIFTED, RWKVChannelMix, token_shift
from tests.helpers import assert_close, assert_lm_decodes_like_forward


def test_token_shift() -> None:
    x = torch.arange(6.0).reshape(1, 3, 2)
    assert token_shift(x, None).tolist() == [[[0, 0], [0, 1], [2, 3]]]
    assert token_shift(x, torch.tensor([[9.0, 9.0]])).tolist() == [[[9, 9], [0, 1], [2, 3]]]


def test_decays_span_time_scales() -> None:
    m = build("rwkv4", d_model=16, n_heads=2)
    w = torch.exp(m.time_decay)
    assert (w > 0).all() and w.max() / w.min() > 100  # from slow to fast forgetting
    m6 = build("rwkv6", d_model=16, n_heads=2)
    w6 = torch.exp(-torch.exp(m6.decay_lambda))  # the decay per step at init (LoRA output 0)
    assert (w6 < 1).all() and (w6 > 0.6).all() and w6.max() > 0.99  # e^-e^-6 .. e^-e^-1


def test_channel_mix_is_causal() -> None:
    torch.manual_seed(0)
    cm = RWKVChannelMix(8, 16)
    x = torch.randn(2, 5, 8)
    y = cm(x)
    x2 = x.clone()
    x2[:, 3] += 1
    assert torch.equal(cm(x2)[:, :3], y[:, :3]) and y.shape == x.shape
    assert torch.allclose(cm(x[:, 3:], x[:, 2]), y[:, 3:])


def finch_reference(m, x: torch.Tensor) -> torch.Tensor:
    """RWKV-6 time mixing from the paper's equations, one token at a time, float64."""
    B, T, C = x.shape
    H = m.config.n_heads
    K = C // H
    S = x.new_zeros(B, H, K, K)
    prev = x.new_zeros(B, C)
    outs = []
    for t in range(T):
        a, b = x[:, t], prev  # ddlerp(a, b) = a + (b - a) * lora(a + (b - a) * mu_x)
        z = a + (b - a) * m.mu_x
        mixed = {name: a + (b - a) * (m.mix_lambda[i] + torch.tanh(z @ m.mix_A[i]) @ m.mix_B[i])
                 for i, name in enumerate(SHIFTED)}
        r, k, v = (lin(mixed[n]).view(B, H, K)
                   for lin, n in ((m.wr, "r"), (m.wk, "k"), (m.wv, "v")))
        g = m.wg(mixed["g"])
        d = m.decay_lambda + torch.tanh(mixed["w"] @ m.decay_A) @ m.decay_B
        w = torch.exp(-torch.exp(d)).view(B, H, K)
        kv = k[..., :, None] * v[..., None, :]  # k_t^T v_t [B, H, K, V]
        o = torch.einsum("bhk,bhkv->bhv", r, S + m.bonus[..., None] * kv)
        S = w[..., None] * S + kv
        mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
        normed = ((o - mean) / torch.sqrt(var + m.config.norm_eps)).reshape(B, C)  # per head
        normed = normed * m.norm.weight + m.norm.bias
        outs.append(m.wo(F.silu(g) * normed))
        prev = a
    return torch.stack(outs, 1)


def test_rwkv6_equals_the_paper_written_as_a_token_loop() -> None:
    torch.manual_seed(0)
    m = build("rwkv6", d_model=12, n_heads=3, chunk_size=4, mix_rank=3, decay_rank=5).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # LoRAs, norm affine, everything away from init
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    y, _ = m(x)
    assert_close(finch_reference(m, x), y, 1e-10)


def test_rwkv6_decay_is_data_dependent() -> None:
    torch.manual_seed(0)
    m = build("rwkv6", d_model=8, n_heads=2, mix_rank=2, decay_rank=2).double()
    with torch.no_grad():
        m.decay_A.normal_()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    log_w = m._inputs(x, None)[3]  # [B, T, H, K]
    assert (log_w < 0).all()
    assert (log_w[:, 1:] - log_w[:, :1]).abs().max() > 1e-3  # differs from token to token


def test_config_errors() -> None:
    for field in ("chunk_size", "mix_rank", "decay_rank"):
        with pytest.raises(ValueError, match=f"RWKV6Config.{field} must be a positive integer"):
            build("rwkv6", d_model=8, n_heads=2, **{field: 0})
    with pytest.raises(ValueError, match="norm_eps must be > 0"):
        build("rwkv6", d_model=8, n_heads=2, norm_eps=0.0)
    with pytest.raises(ValueError, match="RWKV4Config.chunk_size must be a positive integer"):
        build("rwkv4", d_model=8, n_heads=2, chunk_size=-1)
    for name in ("rwkv4", "rwkv6"):  # causal only: no bidirectional form, so no decode either
        with pytest.raises(ValueError, match="causal=False is not supported"):
            build(name, d_model=8, n_heads=2, causal=False)
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=8"):
        build("rwkv6", d_model=8, n_heads=3)


def test_rwkv6_state_size_is_what_it_holds() -> None:
    m = build("rwkv6", d_model=8, n_heads=2)
    assert m.state_size(3, 100) == m.init_state(3, dtype=torch.float32).nbytes() == 3 * 8 * 5 * 4


@pytest.mark.parametrize("name, options", [
    ("rwkv4", {"chunk_size": 4}),
    ("rwkv6", {"chunk_size": 4, "mix_rank": 4, "decay_rank": 4}),
])
def test_lm_generates_with_rwkv_layers(name: str, options: dict) -> None:
    assert_lm_decodes_like_forward(name, options)

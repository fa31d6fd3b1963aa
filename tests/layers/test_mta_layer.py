"""The Multi-Token Attention layer: a fresh layer (identity kernels) without group norm is softmax
attention; group norm and depth scaling as defined; GQA with head mixing; the bidirectional form;
config errors; parameter overhead; state size equals the state held."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longctx.layers import build
from longctx.layers.multi_token_attention import MultiTokenAttentionConfig
from tests.helpers import assert_close

D_MODEL, N_HEADS, B, T = 32, 4, 2, 11
SMALL = {"chunk_size": 4, "query_kernel": 3, "key_kernel": 3, "head_kernel": 2}


def inputs(b: int = B, t: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, D_MODEL, generator=g, dtype=torch.float64)


def make(dtype=torch.float64, randomise=True, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build("multi_token_attention", d_model=D_MODEL, n_heads=N_HEADS, **{**SMALL, **kw})
    if randomise:
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0.0, 0.3)
    return m.to(dtype).eval()


@pytest.mark.parametrize("causal", [True, False])
def test_fresh_layer_without_group_norm_is_softmax_attention(causal: bool) -> None:
    """Identity kernels, no group norm: softmax attention (RoPE, GQA) with the same projections."""
    mta = make(randomise=False, group_norm=False, causal=causal, n_kv_heads=2)
    with torch.no_grad():  # random projections, identity MTA kernels
        for w in (mta.wq, mta.wk, mta.wv, mta.wo):
            w.weight.normal_(0.0, 0.3)
    x = inputs()
    q, k, v = mta.project(x, 0)  # [B, T, H, D], [B, T, Hk, D] x 2
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(2, 1),
        v.transpose(1, 2).repeat_interleave(2, 1), is_causal=causal)  # [B, H, T, D]
    ref = mta.wo(o.transpose(1, 2).reshape(B, T, D_MODEL))
    assert_close(ref, mta(x)[0], 1e-12, "identity-initialised MTA")
    if causal:
        soft = build("softmax_attention", d_model=D_MODEL, n_heads=N_HEADS, n_kv_heads=2)
        soft.double().load_state_dict({n: p for n, p in mta.state_dict().items() if n[0] == "w"})
        assert_close(soft(x)[0], mta(x)[0], 1e-12, "the softmax_attention layer")


def test_group_norm_and_depth_scaling() -> None:
    """o_h <- o_h / rms(o_h) * weight * (1 - lambda_init), lambda_init = 0.8 - 0.6 exp(-0.3 l)."""
    x = inputs()
    for layer_idx in (0, 3):
        m = make(layer_idx=layer_idx)
        plain = make(group_norm=False)
        plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "norm_weight"})
        captured: list[torch.Tensor] = []
        plain.wo.register_forward_hook(lambda _m, inp, _out, c=captured: c.append(inp[0]))
        plain(x)
        o = captured[0].reshape(B, T, N_HEADS, -1)  # per-head outputs before wo
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * m.norm_weight
        scale = 1 - (0.8 - 0.6 * math.exp(-0.3 * layer_idx))
        assert m.config.depth_scale == pytest.approx(scale)
        assert_close(m.wo(o.reshape(B, T, -1) * scale), m(x)[0], 1e-12, f"layer {layer_idx}")
    unscaled = make(depth_scaling=False)
    assert (unscaled(x)[0] - make()(x)[0]).abs().max() > 1e-6


def test_gqa_with_head_mixing_decodes() -> None:
    m = make(n_kv_heads=1, head_kernel=4)
    x = inputs()
    ref, _ = m(x)
    y, state = m(x[:, :5], m.init_state(B))
    outs = [y]
    for t in range(5, T):
        y, state = m(x[:, t : t + 1], state)
        outs.append(y)
    assert_close(ref, torch.cat(outs, 1), 1e-9, "GQA decode")


def test_no_head_mixing_has_no_head_kernel() -> None:
    m = make(head_kernel=1)
    assert m.head_kernel is None
    assert torch.isfinite(m(inputs())[0]).all()


def test_bidirectional_form() -> None:
    m = make(causal=False)
    x = inputs()
    y, state = m(x)
    assert state is None
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (m(x2)[0][:, 0] - y[:, 0]).abs().max() > 1e-6  # the first output sees the last input
    assert_close(y[1:], m(x[1:])[0], 1e-12, "rows independent")
    assert_close(y, make(torch.float32, causal=False)(x.float())[0], 1e-4, "float32")
    with pytest.raises(ValueError, match="bidirectional"):
        m.init_state(B)
    with pytest.raises(ValueError, match="bidirectional"):
        m(x[:, :1], make().init_state(B))


def test_state_size_is_the_state_held() -> None:
    m = make().float()
    for seqlen in (1, 4, 11):
        _, st = m(inputs(t=seqlen).float(), m.init_state(B, dtype=torch.float32))
        assert st.nbytes() == m.state_size(B, seqlen)
    q_part = B * 2 * N_HEADS * (D_MODEL // N_HEADS) * 4  # c_q - 1 = 2 cached queries
    assert m.state_size(B, 0) == q_part
    assert m.state_size(B, 20) - m.state_size(B, 10) == m.state_size(B, 10) - q_part  # KV: linear


def test_parameter_overhead() -> None:
    """At d_model=256, 4 heads and the paper's sizes (c_q=6, c_k=11, c_h=2): H c_q c_k + H c_h
    kernel weights + head_dim norm weights over the 4 d^2 projections."""
    mta = build("multi_token_attention", d_model=256, n_heads=4)
    base = build("softmax_attention", d_model=256, n_heads=4)
    n_mta = sum(p.numel() for p in mta.parameters())
    n_base = sum(p.numel() for p in base.parameters())
    assert n_base == 4 * 256 * 256
    assert n_mta - n_base == 4 * 6 * 11 + 4 * 2 + 64 == 336  # +0.13%


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"head_kernel": 3}, "n_heads=4 must be divisible by head_kernel=3"),
        ({"query_kernel": 0}, "query_kernel must be a positive integer"),
        ({"key_kernel": 2.5}, "key_kernel must be a positive integer"),
        ({"layer_idx": -1}, "layer_idx must be a non-negative integer"),
        ({"norm_eps": 0.0}, "norm_eps must be a positive number"),
        ({"position": "alibi"}, "position must be one of"),
    ],
)
def test_config_errors(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        MultiTokenAttentionConfig(d_model=D_MODEL, n_heads=N_HEADS, **kw)

"""The rwkv4 layer: token shift, decay positivity, channel mixing, an LM decodes."""

from __future__ import annotations

import torch

from longctx.layers import build
from longctx.layers.rwkv import RWKVChannelMix, token_shift
from tests.helpers import assert_lm_decodes_like_forward


def test_token_shift() -> None:
    x = torch.arange(6.0).reshape(1, 3, 2)
    assert token_shift(x, None).tolist() == [[[0, 0], [0, 1], [2, 3]]]
    assert token_shift(x, torch.tensor([[9.0, 9.0]])).tolist() == [[[9, 9], [0, 1], [2, 3]]]


def test_decays_span_time_scales() -> None:
    m = build("rwkv4", d_model=16, n_heads=2)
    w = torch.exp(m.time_decay)
    assert (w > 0).all() and w.max() / w.min() > 100  # from slow to fast forgetting


def test_channel_mix_is_causal() -> None:
    torch.manual_seed(0)
    cm = RWKVChannelMix(8, 16)
    x = torch.randn(2, 5, 8)
    y = cm(x)
    x2 = x.clone()
    x2[:, 3] += 1
    assert torch.equal(cm(x2)[:, :3], y[:, :3]) and y.shape == x.shape
    assert torch.allclose(cm(x[:, 3:], x[:, 2]), y[:, 3:])


def test_lm_generates_with_rwkv4_layers() -> None:
    assert_lm_decodes_like_forward("rwkv4", {"chunk_size": 4})

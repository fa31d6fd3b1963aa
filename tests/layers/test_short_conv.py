"""ShortConv: a causal depthwise conv + residual, with a decode state of the last K - 1 inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.layers.short_conv import ConvState, ShortConv
from tests.helpers import assert_close

D, B, T = 8, 2, 13


def make(kernel_size: int = 4) -> ShortConv:
    conv = ShortConv(D, kernel_size).double()
    with torch.no_grad():
        conv.weight.normal_()  # zero init is the identity; make it do something
    return conv


def x_(t: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, t, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_zero_init_is_identity() -> None:
    conv = ShortConv(D, 4).double()
    x = x_()
    y, state = conv(x)
    assert torch.equal(y, x) and state is None


@pytest.mark.parametrize("k", [2, 4])
def test_matches_explicit_formula(k: int) -> None:
    conv = make(k)
    x = x_()
    y, _ = conv(x)
    w = conv.weight[:, 0]  # [D, K]; conv1d is a correlation: w[:, K-1] multiplies x_t
    ref = x.clone()
    for t in range(T):
        for i in range(k):
            if t - i >= 0:
                ref[:, t] += w[:, k - 1 - i] * x[:, t - i]
    assert_close(ref, y, 1e-12)
    # the same as a left-padded depthwise conv
    xp = F.pad(x.transpose(1, 2), (k - 1, 0))
    assert_close(x + F.conv1d(xp, conv.weight, groups=D).transpose(1, 2), y, 1e-12)


@pytest.mark.parametrize("t", [0, 5, T - 1])
def test_causal(t: int) -> None:
    conv = make()
    x = x_()
    y, _ = conv(x)
    x2 = x.clone()
    x2[:, t] += 3.0
    y2, _ = conv(x2)
    assert torch.equal(y[:, :t], y2[:, :t])
    assert not torch.allclose(y[:, t], y2[:, t])
    # the perturbation reaches at most K - 1 tokens ahead
    assert torch.equal(y[:, t + 4:], y2[:, t + 4:])


@pytest.mark.parametrize("split", [1, 2, 3, 7])
def test_carried_state_equals_one_pass(split: int) -> None:
    conv = make()
    x = x_()
    ref, _ = conv(x)
    y1, s = conv(x[:, :split], conv.init_state(B))
    assert isinstance(s, ConvState) and s.buf.shape == (B, 3, D)
    y2, s = conv(x[:, split:], s)
    assert_close(ref, torch.cat([y1, y2], 1), 1e-12)
    assert_close(x[:, -3:], s.buf, 1e-12, "state holds the last K-1 inputs")


def test_token_by_token_decode_equals_one_pass() -> None:
    conv = make(3)
    x = x_()
    ref, _ = conv(x)
    s = conv.init_state(B)
    outs = []
    for t in range(T):
        y, s = conv(x[:, t:t + 1], s)
        outs.append(y)
    assert_close(ref, torch.cat(outs, 1), 1e-12)


@pytest.mark.parametrize("k", [1, 0, -3, 2.0, True])
def test_kernel_size_below_two_refused(k) -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        ShortConv(D, k)


def test_wrong_state_shape_refused() -> None:
    conv = make(4)
    with pytest.raises(ValueError, match="state buffer"):
        conv(x_(), ShortConv(D, 3).init_state(B))
    with pytest.raises(ValueError, match="state buffer"):
        conv(x_(), conv.init_state(B + 1))


def test_state_size_matches_buffer() -> None:
    conv = make(5)
    s = conv.init_state(B, dtype=torch.float32)
    assert conv.state_size(B) == s.nbytes() == B * 4 * D * 4
    assert s.batch_size == B

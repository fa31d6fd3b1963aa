"""Softmax and sliding-window attention layers with position="alibi" / "none" and causal=False
(float64): decode == full forward, prefill in pieces == whole, tree verification == chain decode
(ALiBi positions S + depth), the bidirectional form refuses states, and the slope buffer."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from longctx.position import alibi_slopes
from tests.helpers import assert_close

D_MODEL, B, T = 32, 2, 11
RTOL = 1e-9
OPTIONS = {"softmax_attention": {"chunk_size": 4},
           "sliding_window_attention": {"window": 4, "chunk_size": 4}}
VARIANTS = [("softmax_attention", {}), ("softmax_attention", {"backend": "chunk"}),
            ("sliding_window_attention", {}),
            ("softmax_attention", {"n_kv_heads": 1}),
            ("sliding_window_attention", {"n_kv_heads": 1})]
IDS = ["softmax-sdpa", "softmax-chunk", "sliding", "softmax-gqa", "sliding-gqa"]


def make(name: str, n_heads: int = 4, d_model: int = D_MODEL, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(name, d_model=d_model, n_heads=n_heads, **{**OPTIONS[name], **extra})
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.double().eval()


def inputs(b: int = B, t: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, D_MODEL, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("position", ["alibi", "none"])
@pytest.mark.parametrize("name,extra", VARIANTS, ids=IDS)
def test_decode_and_prefill_pieces_equal_full_forward(name, extra, position):
    m = make(name, position=position, **extra)
    x = inputs()
    ref, _ = m(x)
    for prefill in (0, 3):
        state, outs = m.init_state(B), []
        if prefill:
            y, state = m(x[:, :prefill], state)
            outs.append(y)
        for t in range(prefill, T):
            y, state = m(x[:, t:t + 1], state)
            outs.append(y)
        assert_close(ref, torch.cat(outs, 1), RTOL, f"decode after prefill {prefill}")
    for split in (1, 5, 9):
        y1, s = m(x[:, :split], m.init_state(B))
        y2, _ = m(x[:, split:], s)
        assert_close(ref, torch.cat([y1, y2], 1), RTOL, f"prefill split at {split}")


@pytest.mark.parametrize("name,extra", VARIANTS[:3], ids=IDS[:3])
def test_position_modes_differ(name, extra):
    """Same weights: ALiBi, RoPE and no position give different outputs (the bias is applied)."""
    x = inputs()
    ys = {p: make(name, position=p, **extra)(x)[0] for p in ("alibi", "rope", "none")}
    assert (ys["alibi"] - ys["none"]).abs().max() > 1e-3
    assert (ys["alibi"] - ys["rope"]).abs().max() > 1e-3


def _chain(parents: list[int], v: int) -> list[int]:
    out = []
    while v >= 0:
        out.append(v)
        v = parents[v]
    return out[::-1]


@torch.no_grad()
@pytest.mark.parametrize("position", ["alibi", "none"])
@pytest.mark.parametrize("extra", [{}, {"backend": "chunk", "n_kv_heads": 2}], ids=["sdpa", "chunk"])
def test_softmax_forward_tree_equals_chain_decode(extra, position):
    """Node i at position S + depth(i): its output == feeding its chain after the cache."""
    m = make("softmax_attention", position=position, **extra)
    _, state = m(inputs(t=5), m.init_state(B))
    parents = [-1, 0, 1, 0, 3, -1, 5, 2]
    x = inputs(t=len(parents), seed=7)
    y = m.forward_tree(x, torch.tensor(parents), state)
    for v in range(len(parents)):
        nodes = _chain(parents, v)
        alone, _ = m(x[:, nodes], state)
        assert_close(alone[:, -1], y[:, v], RTOL, f"node {v}")


@pytest.mark.parametrize("position", ["alibi", "none", "rope"])
@pytest.mark.parametrize("name", ["softmax_attention", "sliding_window_attention"])
def test_bidirectional_forward_and_no_state(name, position):
    m = make(name, causal=False, position=position)
    x = inputs()
    y, state = m(x)
    assert y.shape == x.shape and state is None and torch.isfinite(y).all()
    x2 = x.clone()
    x2[:, 3] += 1.0
    y2, _ = m(x2)
    assert (y[:, 0] - y2[:, 0]).abs().max() > 1e-6, "an earlier output must see a later token"
    if name == "sliding_window_attention":  # |i - j| < window = 4: position 8 is out of reach
        assert torch.equal(y[:, 8:], y2[:, 8:])
    with pytest.raises(ValueError, match=r"bidirectional \(causal=False\), so it has no decode"):
        m.init_state(B)
    causal_state = make(name, position=position).init_state(B)
    with pytest.raises(ValueError, match=r"bidirectional \(causal=False\), so it has no decode"):
        m(x, causal_state)


@pytest.mark.parametrize("backend", ["sdpa", "chunk"])
def test_bidirectional_backends_agree(backend):
    ref, _ = make("softmax_attention", causal=False, position="alibi")(inputs())
    out, _ = make("softmax_attention", causal=False, position="alibi", backend=backend)(inputs())
    assert_close(ref, out, RTOL)


@pytest.mark.parametrize("name", ["softmax_attention", "sliding_window_attention"])
def test_alibi_slope_buffer(name):
    for n_heads, want in ((8, [2.0**-i for i in range(1, 9)]),
                          (4, [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]),
                          (2, [2.0**-4, 2.0**-8]),
                          # 6 heads: the 4-head slopes, then every other 8-head slope (1/2, 1/8)
                          (6, [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3])):
        m = make(name, n_heads=n_heads, d_model=4 * n_heads, position="alibi")
        assert m.alibi_slopes.dtype == torch.float64  # moved with the module
        assert torch.equal(m.alibi_slopes, torch.tensor(want, dtype=torch.float64)), n_heads
        assert "alibi_slopes" not in m.state_dict()  # fixed, recomputed: not a checkpoint entry
    assert make(name, position="none").alibi_slopes is None
    assert make(name, position="rope").alibi_slopes is None


def test_alibi_slopes_function():
    """Power-of-two n: 2^(-8/n) ratio 2^(-8/n); other n: closest power of two + every other slope
    of twice that."""
    s16 = alibi_slopes(16, torch.float64)
    torch.testing.assert_close(s16, 2.0 ** (-0.5 * torch.arange(1, 17, dtype=torch.float64)))
    s12 = alibi_slopes(12, torch.float64)
    assert torch.equal(s12[:8], alibi_slopes(8, torch.float64))
    torch.testing.assert_close(s12[8:], s16[0::2][:4])
    assert alibi_slopes(3).dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="n_heads must be a positive integer"):
        alibi_slopes(0)


def test_position_alibi_refused_where_unsupported():
    with pytest.raises(ValueError, match="position must be one of"):
        build("softmax_attention", d_model=D_MODEL, n_heads=4, position="learned")

"""The dilated-attention and Longformer layers beyond the shared mixer contract: config checks,
the layer against its op's naive form (both causal modes), the global projections, state sizes."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from longctx.layers.common import merge_heads
from longctx.ops.dilated_attention import naive_dilated_attention
from longctx.ops.longformer_attention import naive_longformer_attention
from tests.helpers import assert_close

D_MODEL, N_HEADS, B, T = 32, 4, 2, 13
DILATED = {"segment_lengths": (4, 8), "dilation_rates": (1, 2), "position": "none"}
LONGFORMER = {"window": 3, "global_positions": (0, 5), "chunk_size": 4, "position": "none"}


def make(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(name, d_model=D_MODEL, n_heads=N_HEADS, **options)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.double().eval()


def inputs(t: int = T) -> torch.Tensor:
    return torch.randn(B, t, D_MODEL, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("causal", [True, False])
def test_dilated_layer_is_its_op(causal: bool) -> None:
    m = make("dilated_attention", causal=causal, n_kv_heads=2, **DILATED)
    x = inputs()
    q, k, v = m.project(x, 0)
    o, _ = naive_dilated_attention(q, k, v, (4, 8), (1, 2), causal=causal)
    assert_close(m.wo(merge_heads(o)), m(x)[0], 1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_longformer_layer_is_its_op(causal: bool) -> None:
    m = make("longformer_attention", causal=causal, n_kv_heads=2, **LONGFORMER)
    x = inputs()
    o, _ = naive_longformer_attention(*m.project(x, 0), *m.project_global(x, 0), 3, (0, 5),
                                      causal=causal)
    assert_close(m.wo(merge_heads(o)), m(x)[0], 1e-12)


def test_longformer_global_projections_start_equal_and_are_separate() -> None:
    """§3.1: Q_g, K_g, V_g are initialised to the values of Q_s, K_s, V_s, then trained apart."""
    torch.manual_seed(0)
    m = build("longformer_attention", d_model=D_MODEL, n_heads=N_HEADS)
    for local, glob in ((m.wq, m.wq_g), (m.wk, m.wk_g), (m.wv, m.wv_g)):
        assert torch.equal(local.weight, glob.weight)
        assert local.weight.data_ptr() != glob.weight.data_ptr()
    # Q_g is read by the global rows only (causal row 0 sees one key: its softmax is 1 whatever Q_g)
    for causal, rows in ((True, (5,)), (False, (0, 5))):
        m = make("longformer_attention", causal=causal, **LONGFORMER)
        x = inputs()
        y = m(x)[0]
        with torch.no_grad():
            m.wq_g.weight.add_(0.5)
        changed = (y - m(x)[0]).abs().amax(dim=(0, 2)) > 1e-9
        assert changed.tolist() == [t in rows for t in range(T)]


def test_state_size_is_the_state() -> None:
    for name, opts, rows in (("dilated_attention", DILATED, 8),
                             ("longformer_attention", LONGFORMER, 3 + 2 + 6)):
        m = make(name, **opts)
        state = m.init_state(B, dtype=torch.float32)
        assert state.nbytes() - 8 == m.state_size(B, 1000)  # minus the int64 n_seen
        assert m.state_size(B, 5) == 2 * B * rows * N_HEADS * (D_MODEL // N_HEADS) * 4
        _, state = m(inputs(), m.init_state(B))
        assert state.nbytes() == m.init_state(B).nbytes()  # bounded: does not grow with T


def test_longformer_bidirectional_global_position_out_of_range() -> None:
    m = make("longformer_attention", causal=False, **LONGFORMER)
    with pytest.raises(ValueError, match=r"global_positions \[5\] are out of range .* T=4"):
        m(inputs(4))
    causal = make("longformer_attention", **LONGFORMER)
    y, _ = causal(inputs(4))  # causal: position 5 is simply a future token
    assert y.shape == (B, 4, D_MODEL)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="DilatedAttentionConfig: segment_lengths and dilation_rates must "
                                         "have the same length"):
        build("dilated_attention", segment_lengths=(4, 8), dilation_rates=(1,))
    with pytest.raises(ValueError, match="dilation rate 8 is larger than its segment length 4"):
        build("dilated_attention", segment_lengths=(4,), dilation_rates=(8,))
    with pytest.raises(ValueError, match="every entry of segment_lengths must be a positive"):
        build("dilated_attention", segment_lengths=(4, 0), dilation_rates=(1, 1))
    with pytest.raises(ValueError, match="LongformerAttentionConfig.window must be a positive"):
        build("longformer_attention", window=0)
    with pytest.raises(ValueError, match=r"LongformerAttentionConfig: global_positions must be >= 0"):
        build("longformer_attention", global_positions=(0, -2))
    with pytest.raises(ValueError, match=r"must be distinct; \[3\]"):
        build("longformer_attention", global_positions=(3, 3))
    with pytest.raises(ValueError, match="position must be one of"):
        build("dilated_attention", position="alibi")
    # lists (as a TOML suite gives them) become tuples; positions are sorted
    m = build("longformer_attention", global_positions=[7, 2])
    assert m.config.global_positions == (2, 7)
    d = build("dilated_attention", segment_lengths=[4, 8], dilation_rates=[1, 2])
    assert d.config.segment_lengths == (4, 8) and d.config.dilation_rates == (1, 2)


def test_bidirectional_has_no_state() -> None:
    for name, opts in (("dilated_attention", DILATED), ("longformer_attention", LONGFORMER)):
        m = make(name, causal=False, **opts)
        with pytest.raises(ValueError, match="bidirectional"):
            m.init_state(B)

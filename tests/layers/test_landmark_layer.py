"""The landmark-attention mixer: decode with retrieval of every block == the full forward; a
small ``top_k`` reads only the retrieved blocks; the landmark keys are what the docstring says;
the state grows with T and ``state_size`` counts it (the contract tests live in test_mixers.py)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from longctx.layers import build
from longctx.layers.landmark_attention import LandmarkAttentionConfig
from tests.helpers import assert_close

D_MODEL, N_HEADS, B, BS = 32, 4, 2, 4
RTOL = 1e-9


def make(**extra) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build("landmark_attention", d_model=D_MODEL, n_heads=N_HEADS,
              **{"block_size": BS, "chunk_size": 4, **extra})
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.double().eval()


def inputs(t: int, b: int = B, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, D_MODEL, generator=g, dtype=torch.float64)


def decode(m, x: torch.Tensor, prefill: int):
    """Prefill ``x[:, :prefill]`` in one call, then one token at a time."""
    state, outs = m.init_state(x.shape[0]), []
    if prefill:
        y, state = m(x[:, :prefill], state)
        outs.append(y)
    for t in range(prefill, x.shape[1]):
        y, state = m(x[:, t : t + 1], state)
        outs.append(y)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("extra", [{}, {"top_k": 6}, {"n_kv_heads": 2, "top_k": 100},
                                   {"landmark": "last"}, {"position": "none", "chunk_size": 3}],
                         ids=["top_k=None", "top_k=6", "gqa", "last", "nope"])
@pytest.mark.parametrize("prefill", [0, 6])
def test_decode_retrieving_every_block_equals_forward(extra, prefill):
    """23 tokens = 5 complete blocks: top_k >= 5 retrieves them all, so decode is exact."""
    m = make(**extra)
    x = inputs(23)
    ref, _ = m(x)
    out, state = decode(m, x, prefill)
    assert_close(ref, out, RTOL, "decode")
    assert state.k_blocks.shape[1] == 5 and state.k_tail.shape[1] == 3
    assert m.last_selected.shape[-1] == 5  # the last step read every complete block


def test_small_top_k_reads_only_top_k_blocks():
    """top_k = 2 of 10 blocks: each step retrieves 2 blocks per head; NaN in the keys/values of
    every block no head retrieved leaves the step's output unchanged (they are never read)."""
    m = make(top_k=2)
    x = inputs(45)
    y_full, _ = m(x)
    _, state = m(x[:, :40], m.init_state(B))  # 10 complete blocks
    outs = []
    for t in range(40, 45):
        y, new = m(x[:, t : t + 1], state)
        sel = m.last_selected
        assert sel.shape == (B, N_HEADS, 2) and torch.isfinite(y).all()
        k_blocks, v_blocks = state.k_blocks.clone(), state.v_blocks.clone()
        for b, h in itertools.product(range(B), range(N_HEADS)):  # n_kv_heads == n_heads here
            for n in set(range(10)) - set(sel[b, h].tolist()):
                k_blocks[b, n, :, h] = float("nan")
                v_blocks[b, n, :, h] = float("nan")
        poisoned = dataclasses.replace(state, k_blocks=k_blocks, v_blocks=v_blocks)
        y2, _ = m(x[:, t : t + 1], poisoned)
        assert torch.equal(y, y2)
        outs.append(y)
        state = new
    # retrieval is an approximation of the exact forward, not equal to it
    assert (torch.cat(outs, 1) - y_full[:, 40:]).abs().max() > 1e-6


def test_landmark_key_is_projected_block_mean_at_last_position():
    for position in ("none", "rope"):
        m = make(position=position)
        x = inputs(13)
        _, state = m(x, m.init_state(B))
        assert state.k_landmark.shape == (B, 3, N_HEADS, D_MODEL // N_HEADS)
        for n in range(3):
            x_lm = x[:, n * BS : (n + 1) * BS].mean(dim=1) + m.landmark_embedding
            _, k_ref, _ = m.project(x_lm[:, None], (n + 1) * BS - 1)
            assert_close(k_ref[:, 0], state.k_landmark[:, n], RTOL, f"landmark {n}")
        assert_close(x[:, 12:].sum(1), state.x_sum, RTOL, "x_sum")  # the open block's input


def test_landmark_last_uses_the_last_input():
    m = make(landmark="last", position="none")
    x = inputs(9)
    _, state = m(x, m.init_state(B))
    for n in range(2):
        _, k_ref, _ = m.project((x[:, (n + 1) * BS - 1] + m.landmark_embedding)[:, None], 0)
        assert_close(k_ref[:, 0], state.k_landmark[:, n], RTOL, f"landmark {n}")


def test_gradients_reach_the_landmark_embedding():
    m = make()
    x = inputs(10).requires_grad_(True)
    y, _ = m(x)
    y.square().sum().backward()
    assert m.landmark_embedding.grad.abs().max() > 0
    m.zero_grad()
    y, _ = m(inputs(BS))  # one block only: no landmark is ever used
    y.square().sum().backward()
    assert m.landmark_embedding.grad is None or m.landmark_embedding.grad.abs().max() == 0


@pytest.mark.parametrize("seqlen", [1, 3, 4, 11, 16])
def test_state_size_grows_with_T_and_counts_the_state(seqlen):
    m = make()
    size = m.state_size(B, seqlen)
    _, state = decode(m.float(), inputs(seqlen).float(), prefill=seqlen // 2)
    assert state.nbytes() == size
    assert m.state_size(B, seqlen + 1) > size
    assert m.state_size(B, seqlen, torch.float64) == 2 * size


def test_config_errors():
    for field, bad in (("block_size", 0), ("top_k", 0), ("top_k", -1), ("block_size", 2.5)):
        with pytest.raises(ValueError, match=f"LandmarkAttentionConfig.{field}"):
            LandmarkAttentionConfig(**{field: bad})
    with pytest.raises(ValueError, match="landmark must be one of"):
        LandmarkAttentionConfig(landmark="first")
    with pytest.raises(ValueError, match="causal=False is not supported"):
        LandmarkAttentionConfig(causal=False)
    m = make()
    with pytest.raises(ValueError, match="state holds blocks of 4 tokens but block_size=8"):
        other = make(block_size=8)
        other(inputs(1), m.init_state(B))

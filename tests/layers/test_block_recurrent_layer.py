"""Block-Recurrent Transformer: one call == blocks fed with the carried state == a no-cache
reference; both gates; gradients through the state up to the BPTT horizon and not past it."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from tests.helpers import assert_close, assert_lm_decodes_like_forward

D, W = 16, 4


def make(**kw):
    torch.manual_seed(0)
    m = build("block_recurrent", d_model=D, n_heads=2, block_size=W, n_state=3, **kw).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m


def naive_brt(m, x: torch.Tensor) -> torch.Tensor:
    """No caching: for each token, the state from the complete blocks before its block (recomputed
    from the initial state), then its output over [previous block ; its block up to itself]."""
    outs = []
    for t in range(x.shape[1]):
        b0 = (t // W) * W
        s = m.state_init.expand(x.shape[0], -1, -1)
        for start in range(0, b0, W):
            s = m._horizontal(s, x[:, start:start + W])
        prev = x[:, max(0, b0 - W):b0]
        outs.append(m._vertical(prev, x[:, b0:t + 1], 1, b0 - prev.shape[1], s))
    return torch.cat(outs, 1)


@pytest.mark.parametrize("gate", ["fixed", "lstm"])
def test_one_call_equals_blocks_and_naive(gate: str) -> None:
    m = make(gate=gate)
    x = torch.randn(2, 14, D, dtype=torch.float64)
    y, _ = m(x)
    assert_close(naive_brt(m, x), y, rtol=1e-10)
    state, pieces = m.init_state(2), []
    for a, b in ((0, 3), (3, 10), (10, 14)):
        y_p, state = m(x[:, a:b], state)
        pieces.append(y_p)
    assert_close(y, torch.cat(pieces, 1), rtol=1e-10)
    assert int(state.n_seen) == 14 and state.x_cur.shape[1] == 14 % W and state.x_prev.shape[1] == W


@pytest.mark.parametrize("k", [0, 1, 2])
def test_gradients_stop_at_the_bptt_horizon(k: int) -> None:
    m = make(bptt_blocks=k)
    x = torch.randn(1, 6 * W, D, dtype=torch.float64, requires_grad=True)
    y, _ = m(x)
    last = 5
    (g,) = torch.autograd.grad(y[:, last * W:].sum(), x)
    for blk in range(last - 1):  # block last-1 also reaches it through the attention window
        reaches = bool(g[:, blk * W:(blk + 1) * W].abs().max() > 0)
        assert reaches == (k == 0 or blk // k == last // k), (k, blk)


def test_errors_and_lm() -> None:
    with pytest.raises(ValueError, match=r"gate must be one of \['fixed', 'lstm'\]"):
        build("block_recurrent", d_model=D, n_heads=2, gate="gru")
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        build("block_recurrent", d_model=D, n_heads=2, block_size=0)
    assert_lm_decodes_like_forward("block_recurrent", {"block_size": 4, "n_state": 2, "gate": "lstm"})

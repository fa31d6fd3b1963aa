"""RMT (layer-local): one call == segment by segment with the carried memory; the naive form
(each segment recomputed from scratch with the memory chain) agrees; gradients reach earlier
segments through the memory up to the BPTT horizon and are exactly zero past it; errors."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from tests.helpers import assert_close, assert_lm_decodes_like_forward

D, S, M = 16, 4, 2


def make(**kw):
    torch.manual_seed(0)
    m = build("rmt", d_model=D, n_heads=2, segment_len=S, n_mem=M, **kw).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m


def naive_rmt(m, x: torch.Tensor) -> torch.Tensor:
    """No caching: for every token, rebuild the memory chain over the complete segments before it
    and run its segment prefix [memory ; segment[:i+1]] from scratch."""
    outs = []
    for t in range(x.shape[1]):
        memory = m.memory_init.expand(x.shape[0], -1, -1)
        first = (t // S) * S
        for s in range(0, first, S):
            _, memory = m._segment(memory, x[:, s:s + S], write=True)
        y, _ = m._segment(memory, x[:, first:t + 1], write=False)
        outs.append(y[:, -1:])
    return torch.cat(outs, 1)


def test_one_call_equals_segments_and_naive() -> None:
    m = make()
    x = torch.randn(2, 15, D, dtype=torch.float64)
    y, _ = m(x)
    assert_close(naive_rmt(m, x), y, rtol=1e-10)
    state = m.init_state(2)
    pieces = []
    for a, b in ((0, 3), (3, 9), (9, 15)):  # splits inside and across segments
        y_p, state = m(x[:, a:b], state)
        pieces.append(y_p)
    assert_close(y, torch.cat(pieces, 1), rtol=1e-10)
    assert state.segment.shape[1] == 15 % S


@pytest.mark.parametrize("k", [0, 1, 2])
def test_gradients_stop_at_the_bptt_horizon(k: int) -> None:
    m = make(bptt_segments=k)
    x = torch.randn(1, 5 * S, D, dtype=torch.float64, requires_grad=True)
    y, _ = m(x)
    last = 4  # the loss on the last segment's outputs
    (g,) = torch.autograd.grad(y[:, last * S:].sum(), x)
    for seg in range(last):
        reaches = g[:, seg * S:(seg + 1) * S].abs().max() > 0
        # memory is detached after every k-th completed segment: segment `seg` feeds segment `last`
        # only if no detach lies between them
        expect = k == 0 or seg // k == last // k
        assert bool(reaches) == expect, (k, seg)


def test_errors_and_lm() -> None:
    with pytest.raises(ValueError, match="segment_len must be a positive integer"):
        build("rmt", d_model=D, n_heads=2, segment_len=0)
    with pytest.raises(ValueError, match="bptt_segments must be an int >= 0"):
        build("rmt", d_model=D, n_heads=2, bptt_segments=-1)
    m = make()
    with pytest.raises(ValueError, match="state is a"):
        m(torch.randn(1, 2, D, dtype=torch.float64), build("mega", d_model=D, n_heads=2).init_state(1))
    assert_lm_decodes_like_forward("rmt", {"segment_len": 4, "n_mem": 2})

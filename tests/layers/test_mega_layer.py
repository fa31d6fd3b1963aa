"""The mega layer: Mega-chunk decode == forward with a bounded state, bidirectional form, errors."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from tests.helpers import assert_close, assert_lm_decodes_like_forward


def make(**kw):
    torch.manual_seed(0)
    m = build("mega", d_model=16, n_heads=2, ema_dim=3, **kw).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m


def test_mega_chunk_decode_equals_forward_and_state_is_bounded() -> None:
    m = make(chunk_size=4)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    ref, _ = m(x)
    state = m.init_state(2)
    y1, state = m(x[:, :6], state)  # a prefill crossing a chunk boundary
    outs = [y1]
    sizes = []
    for t in range(6, 11):
        y, state = m(x[:, t:t + 1], state)
        outs.append(y)
        sizes.append(state.k.shape[1])
    assert_close(ref, torch.cat(outs, 1), rtol=1e-9)
    assert max(sizes) <= 4 and sizes == [3, 4, 1, 2, 3]  # the cache resets at every chunk start
    # n_seen is an int64 counter, not in state_size
    assert m.state_size(2, 11, torch.float64) == state.nbytes() - 8


def test_chunked_attention_does_not_cross_chunks() -> None:
    m = make(chunk_size=4)
    # with the EMA switched off (beta = 0), outputs depend only on their own chunk
    with torch.no_grad():
        m.beta.zero_()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :4] += 1.0
    assert torch.allclose(m(x)[0][:, 4:], m(x2)[0][:, 4:])


def test_errors_and_lm() -> None:
    with pytest.raises(ValueError, match="chunk_size must be an int >= 0"):
        build("mega", d_model=16, n_heads=2, chunk_size=-1)
    with pytest.raises(ValueError, match="configured bidirectional"):
        build("mega", d_model=16, n_heads=2, causal=False).init_state(1)
    assert_lm_decodes_like_forward("mega", {"ema_dim": 4, "chunk_size": 4})

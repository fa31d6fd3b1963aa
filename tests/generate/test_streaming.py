"""Streaming evaluation: cache-policy streams vs the re-computation baseline, chunking, generation."""

from __future__ import annotations

import pytest
import torch

from longctx.cache import sinks, window
from longctx.generate.streaming import (
    LongCtxStreamer,
    decode_latency,
    generate_tokens,
    loss_by_position,
    recompute_latency,
    recompute_nll,
    stream_nll,
)
from longctx.models.lm import LMConfig, LongCtxLM
from tests.helpers import assert_close

V = 50


def lm(n_layers: int = 1) -> LongCtxLM:
    torch.manual_seed(0)
    return LongCtxLM(LMConfig(vocab_size=V, d_model=32, n_layers=n_layers, n_heads=2)).double().eval()


def ids(t: int = 90, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (t,), generator=torch.Generator().manual_seed(seed))


def forward(model):
    return lambda x: model(x)[0]


def test_one_layer_window_stream_equals_recomputation() -> None:
    # one layer: a window cache keeps exactly the keys a fresh forward over the window computes
    model, x = lm(), ids()
    got = stream_nll(LongCtxStreamer(model, window(8)), x, progress=False).nll
    ref = recompute_nll(forward(model), x, 8, batch_size=7, progress=False).nll
    assert got.shape == (x.numel() - 1,)
    assert_close(ref, got, rtol=1e-6)


def test_recompute_with_a_prefix_matches_its_definition() -> None:
    model, x = lm(2), ids(40)
    got = recompute_nll(forward(model), x, 6, prefix=[3], batch_size=5, progress=False).nll
    for t in (0, 4, 5, 6, 20, 38):
        ctx = torch.cat([torch.tensor([3]), x[max(0, t - 5):t + 1]])
        with torch.no_grad():
            ref = -model(ctx[None])[0][0, -1].float().log_softmax(-1)[x[t + 1]]
        assert abs(float(got[t]) - float(ref)) < 1e-5, t


@pytest.mark.parametrize("chunk", [3, 16, 90])
def test_losses_do_not_depend_on_the_feed_chunk(chunk: int) -> None:
    model, x = lm(2), ids()
    streamer = LongCtxStreamer(model, sinks(2, 10))
    ref = stream_nll(streamer, x, chunk=1, progress=False)
    got = stream_nll(streamer, x, chunk=chunk, progress=False)
    assert_close(ref.nll, got.nll, rtol=1e-6)
    assert max(b for _, b in got.cache_bytes) == max(b for _, b in ref.cache_bytes)


def test_full_stream_equals_one_forward() -> None:
    model, x = lm(2), ids()
    got = stream_nll(LongCtxStreamer(model, None), x, chunk=25, progress=False).nll
    ref = -model(x[None])[0][0, :-1].float().log_softmax(-1).gather(-1, x[1:, None])[:, 0]
    assert_close(ref, got, rtol=1e-6)


def test_generate_tokens_greedy_matches_model_generate() -> None:
    model = lm(2)
    prompt = ids(7).tolist()
    got = list(generate_tokens(LongCtxStreamer(model, sinks(2, 40)), prompt, 12))
    ref = model.generate(torch.tensor([prompt]), 12)[0, 7:].tolist()
    assert got == ref
    sampled = list(generate_tokens(LongCtxStreamer(model, sinks(2, 6)), prompt, 30, temperature=1.0,
                                   top_k=5, seed=3))
    again = list(generate_tokens(LongCtxStreamer(model, sinks(2, 6)), prompt, 30, temperature=1.0,
                                 top_k=5, seed=3))
    assert sampled == again and all(0 <= t < V for t in sampled)
    with pytest.raises(ValueError, match="the prompt is empty"):
        next(generate_tokens(LongCtxStreamer(model, None), [], 3))


def test_latency_rows_and_constant_cache() -> None:
    model = lm(2).float()
    rows = decode_latency(LongCtxStreamer(model, sinks(2, 6)), ids(64), every=16, progress=False)
    assert [r["position"] for r in rows] == [16, 32, 48, 64]
    assert len({r["cache_bytes"] for r in rows}) == 1 and all(r["ms_per_token"] > 0 for r in rows)
    grows = decode_latency(LongCtxStreamer(model, None), ids(64), every=16, progress=False)
    assert grows[-1]["cache_bytes"] > grows[0]["cache_bytes"]
    rec = recompute_latency(forward(model), ids(64), 8, [16, 64], repeats=2)
    assert [r["position"] for r in rec] == [16, 64]


def test_loss_by_position() -> None:
    nll = torch.arange(10, dtype=torch.float32)
    assert loss_by_position(nll, 4) == [(4, 1.5), (8, 5.5), (10, 8.5)]

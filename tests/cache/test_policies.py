"""Cache policies on longctx models: exact StreamingLLM semantics, constant memory, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

from longctx.cache import (
    CachePolicy,
    PolicyKVState,
    check_fits_training,
    full,
    landmark,
    make_policy,
    sinks,
    window,
)
from longctx.cache.kv import PolicyBuffers, ring_slot, rotate_by
from longctx.layers import build
from longctx.models.lm import LMConfig, LongCtxLM
from longctx.position import RotaryEmbedding
from tests.helpers import assert_close

V, T = 40, 30


def lm(n_layers: int = 1, **options) -> LongCtxLM:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=V, d_model=32, n_layers=n_layers, n_heads=4,
                   mixer_options={"softmax_attention": {"n_kv_heads": 2, **options}})
    return LongCtxLM(cfg).double().eval()


def tokens(b: int = 2, t: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def kept(t: int, n_sink: int, w: int) -> list[int]:
    """StreamingLLM's cache after token t: the first n_sink tokens and the last w (t included)."""
    return list(range(min(t + 1, n_sink))) + list(range(max(n_sink, t - w + 1), t + 1))


def stream(model: LongCtxLM, ids: torch.Tensor, policy: CachePolicy, piece: int = 1):
    state = model.init_state(ids.shape[0], cache=policy)
    outs = []
    for s in range(0, ids.shape[1], piece):
        logits, state = model(ids[:, s:s + piece], state)
        outs.append(logits)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("policy", [sinks(2, 5), sinks(1, 3), window(6)], ids=str)
@pytest.mark.parametrize("position", ["rope", "none"])
def test_one_layer_stream_equals_recomputing_the_kept_tokens_at_cache_positions(policy, position) -> None:
    # one layer: keys/values depend on their own token only, so the cached stream must equal a fresh
    # forward over exactly the kept tokens at positions 0 .. C-1 (StreamingLLM §3.2)
    model = lm(position=position)
    ids = tokens()
    got, _ = stream(model, ids, policy)
    for t in range(T):
        ref = model(ids[:, kept(t, policy.n_sink, policy.window)])[0][:, -1]
        assert_close(ref, got[:, t], rtol=1e-8)


@pytest.mark.parametrize("piece", [1, 4, 7, 30])
def test_prefill_in_pieces_equals_token_by_token(piece: int) -> None:
    model = lm(n_layers=2)
    ids = tokens()
    ref, _ = stream(model, ids, sinks(2, 6), piece=1)
    got, state = stream(model, ids, sinks(2, 6), piece=piece)
    assert_close(ref, got, rtol=1e-9)
    assert int(state.mixers[0].n_seen) == T


def test_cache_that_holds_everything_equals_the_full_model() -> None:
    model = lm(n_layers=2)
    ids = tokens()
    ref = model(ids)[0]
    for policy in (sinks(4, 100), window(T), full()):
        got, _ = stream(model, ids, policy, piece=3)
        assert_close(ref, got, rtol=1e-9)
    g_full = model.generate(ids[:, :5], 20)
    assert torch.equal(model.generate(ids[:, :5], 20, cache=sinks(4, 60)), g_full)


def test_memory_is_constant_over_a_long_stream() -> None:
    model = lm(n_layers=2)
    state = model.init_state(1, cache=sinks(2, 6))
    ptrs = [s.k.data_ptr() for s in state.mixers]
    n0 = state.nbytes()
    ids = tokens(1, 20 * 8)
    for t in range(ids.shape[1]):
        logits, state = model(ids[:, t:t + 1], state)
        assert torch.isfinite(logits).all()
    assert state.nbytes() == n0 and [s.k.data_ptr() for s in state.mixers] == ptrs
    assert state.mixers[0].k.shape[1] == 8 and state.mixers[0].held() == 8


def test_full_policy_grows_by_doubling() -> None:
    b = PolicyBuffers(full(), seq_dim=1)
    k = torch.randn(1, 70, 2, 4, dtype=torch.float64)
    b.update(k[:, :10], k[:, :10])
    assert b.keys.shape[1] == 64
    b.update(k[:, 10:], k[:, 10:])
    assert b.keys.shape[1] == 128 and torch.equal(b.keys[:, :70], k) and b.n_seen == 70


def test_ring_slots_and_sink_rotation() -> None:
    p = sinks(2, 3)
    assert [ring_slot(p, t) for t in range(9)] == [0, 1, 2, 3, 4, 2, 3, 4, 2]
    rope = RotaryEmbedding(8)
    x = torch.randn(1, 3, 2, 8, dtype=torch.float64)
    cos, sin = rope.cos_sin(3, 0)
    from longctx.position import apply_rotary
    at0 = apply_rotary(x, cos, sin)
    cos5, sin5 = rope.cos_sin(3, 5)
    assert_close(rotate_by(at0, 5, rope.inv_freq, seq_dim=1), apply_rotary(x, cos5, sin5), rtol=1e-6)
    assert_close(rotate_by(at0.transpose(1, 2), 5, rope.inv_freq, seq_dim=2).transpose(1, 2),
                 apply_rotary(x, cos5, sin5), rtol=1e-6)


def test_hybrid_model_applies_the_policy_to_attention_layers_only() -> None:
    torch.manual_seed(0)
    model = LongCtxLM(LMConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4,
                               mixer=["softmax_attention", "gla"])).eval()
    state = model.init_state(1, cache=window(4))
    assert isinstance(state.mixers[0], PolicyKVState) and not isinstance(state.mixers[1], PolicyKVState)
    ids = tokens(1, 12)
    logits, _ = model(ids, state)
    assert torch.isfinite(logits).all()


def test_policy_errors() -> None:
    with pytest.raises(ValueError, match="window must be a positive int"):
        CachePolicy(0, 0)
    with pytest.raises(ValueError, match="n_sink must be an int >= 0"):
        sinks(-1, 4)
    with pytest.raises(ValueError, match="needs a window"):
        CachePolicy(n_sink=2)
    with pytest.raises(ValueError, match="unknown cache policy 'sink'"):
        make_policy("sink", 4, 10)
    with pytest.raises(ValueError, match="needs a window size"):
        make_policy("sinks", 4, None)
    assert make_policy("window", 4, 10) == window(10) and make_policy("full") == full()
    torch.manual_seed(0)
    gla = LongCtxLM(LMConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4, mixer="gla"))
    with pytest.raises(ValueError, match="no softmax_attention layer"):
        gla.init_state(1, cache=window(4))
    alibi = lm(position="alibi")
    with pytest.raises(ValueError, match="ALiBi layers are not supported"):
        alibi.init_state(1, cache=sinks(1, 4))
    dyn = lm(rope_scaling={"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16})
    with pytest.raises(ValueError, match="dynamic NTK"):
        dyn.init_state(1, cache=sinks(1, 4))
    model = lm()
    state = model.init_state(2, cache=sinks(1, 4))
    with pytest.raises(ValueError, match="batch size 2 but x has 3"):
        model(tokens(3, 2), state)
    with pytest.raises(ValueError, match="per-position states"):
        model.forward_states(tokens(2, 2), state)
    b = PolicyBuffers(sinks(1, 2), seq_dim=1)
    k = torch.randn(1, 5, 2, 4)
    with pytest.raises(ValueError, match="would evict tokens in the middle of the forward"):
        b.update(k, k)
    b.update(k[:, :1], k[:, :1])
    with pytest.raises(ValueError, match="a cache is made for one batch size"):
        b.update(torch.randn(2, 1, 2, 4), torch.randn(2, 1, 2, 4))


def test_warns_when_the_cache_spans_more_than_the_trained_length() -> None:
    with pytest.warns(UserWarning, match="trained on 64.*--rope yarn --rope-factor 2"):
        assert check_fits_training(sinks(4, 100), 64, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not check_fits_training(sinks(4, 60), 64, None)
        assert not check_fits_training(sinks(4, 100), 64, {"rope_type": "yarn", "factor": 2.0})


def test_mixer_level_state_round_trip() -> None:
    torch.manual_seed(0)
    m = build("softmax_attention", d_model=16, n_heads=2).double()
    st = PolicyKVState.empty(m, 2, sinks(1, 3), dtype=torch.float64)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    _, st = m(x, st)
    assert st.select([1]).batch_size == 1 and st.to(torch.float32).k.dtype == torch.float32
    assert st.held() == 4 and int(st.n_seen) == 6


def test_landmark_policy_sets_the_retrieval_of_landmark_layers() -> None:
    def landmark_lm(top_k=None) -> LongCtxLM:
        torch.manual_seed(0)
        opts = {"landmark_attention": {"block_size": 4, "top_k": top_k}}
        return LongCtxLM(LMConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4,
                                  mixer="landmark_attention", mixer_options=opts)).double().eval()

    ids = tokens(2, 40)
    prompt, rest = ids[:, :30], ids[:, 30:]

    def decode(model, cache):
        logits, state = model(prompt, model.init_state(2, cache=cache))
        outs = [logits[:, -1]]
        for t in range(rest.shape[1]):
            logits, state = model(rest[:, t:t + 1], state)
            outs.append(logits[:, -1])
        return torch.stack(outs, 1), state

    got, state = decode(landmark_lm(), landmark(1))
    ref, _ = decode(landmark_lm(top_k=1), None)
    every, _ = decode(landmark_lm(), None)
    assert state.mixers[0].top_k == 1
    assert_close(ref, got, rtol=1e-12)
    assert (got - every).abs().max() > 1e-6  # retrieving 1 block is not attending to all 7
    with pytest.raises(ValueError, match="no landmark_attention layer"):
        lm().init_state(1, cache=landmark(2))
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        landmark(0)
    with pytest.raises(ValueError, match="needs the number of retrieved blocks"):
        make_policy("landmark")
    assert make_policy("landmark", top_k=3) == landmark(3)


def test_full_cache_with_max_len_is_preallocated_and_refuses_a_longer_prompt() -> None:
    model = lm()
    state = model.init_state(1, cache=full(max_len=16))
    assert state.mixers[0].k.shape[1] == 0
    _, state = model(tokens(1, 10), state)
    assert state.mixers[0].k.shape[1] == 16
    with pytest.raises(ValueError, match=r"10 tokens held \+ 7 new > max_len=16; a full cache does not evict"):
        model(tokens(1, 7), state)
    with pytest.raises(ValueError, match="only for a full cache"):
        CachePolicy(0, 8, max_len=16)

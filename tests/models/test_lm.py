"""LongCtxLM: cached generation == slow full-forward reference, hybrids, config errors."""

from __future__ import annotations

import pytest
import torch

from longctx.errors import UnknownNameError
from longctx.layers import config_class, names
from longctx.models import LMConfig, LongCtxLM
from longctx.models.lm import LMState
from tests.helpers import assert_close

VOCAB, D_MODEL, N_HEADS, N_LAYERS = 48, 32, 2, 2
CAUSAL = [n for n in names() if config_class(n).causal]  # a causal LM takes causal mixers only
SMALL = {"sliding_window_attention": {"window": 4, "chunk_size": 4},
         "linear_attention": {"chunk_size": 4}, "retention": {"chunk_size": 4},
         "gla": {"chunk_size": 4}, "softmax_attention": {"chunk_size": 4}}


def make_lm(mixer, short_conv: int = 0, n_layers: int = N_LAYERS, **kw) -> LongCtxLM:
    used = [mixer] if isinstance(mixer, str) else mixer
    options = {m: SMALL[m] for m in used if m in SMALL}
    cfg = LMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=n_layers, n_heads=N_HEADS,
                   mixer=mixer, mixer_options=options, short_conv=short_conv, **kw)
    torch.manual_seed(0)
    model = LongCtxLM(cfg)
    with torch.no_grad():  # larger weights than the 0.02 init, so argmax is not degenerate
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5 if "embed" in name else 0.3)
            elif "conv" in name:
                p.normal_(0.0, 0.5)
        for block in model.blocks:
            if block.conv is not None:
                block.conv.weight.normal_(0.0, 0.5)
    return model.double().eval()


def prompt(b: int = 2, t: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def slow_greedy(model: LongCtxLM, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Re-run the whole forward on the growing sequence; take the argmax of the last position."""
    seq = idx
    with torch.no_grad():
        for _ in range(n):
            logits, state = model(seq)
            assert state is None
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize("short_conv", [0, 4])
@pytest.mark.parametrize("mixer", CAUSAL)
def test_greedy_generate_equals_slow_reference(mixer: str, short_conv: int) -> None:
    model = make_lm(mixer, short_conv)
    idx = prompt()
    n_new = 9  # past the window (4) and the conv kernel (4)
    fast = model.generate(idx, n_new)
    slow = slow_greedy(model, idx, n_new)
    assert fast.shape == (2, 5 + n_new)
    assert torch.equal(fast[:, :5], idx)
    assert torch.equal(fast, slow), f"{mixer}: cached generate {fast.tolist()} != {slow.tolist()}"
    # the generated tokens are not all the same (the test would be weak otherwise)
    assert len(set(fast[:, 5:].flatten().tolist())) > 1


@pytest.mark.parametrize("short_conv", [0, 3])
@pytest.mark.parametrize("mixer", CAUSAL)
def test_cached_decode_logits_equal_full_forward(mixer: str, short_conv: int) -> None:
    model = make_lm(mixer, short_conv)
    idx = prompt(t=12)
    ref, _ = model(idx)
    state = model.init_state(2)
    logits, state = model(idx[:, :5], state)
    outs = [logits]
    for t in range(5, 12):
        logits, state = model(idx[:, t:t + 1], state)
        outs.append(logits)
    assert isinstance(state, LMState)
    assert_close(ref, torch.cat(outs, 1), 1e-9, f"{mixer} cached logits")
    # prefill in two chunks too
    s = model.init_state(2)
    a, s = model(idx[:, :7], s)
    b, s = model(idx[:, 7:], s)
    assert_close(ref, torch.cat([a, b], 1), 1e-9, f"{mixer} chunked prefill")


def test_hybrid_stack() -> None:
    model = make_lm(["softmax_attention", "gla"], short_conv=4)
    assert [m.name for m in model.mixers] == ["softmax_attention", "gla"]
    assert model.mixers[0].config.chunk_size == 4  # per-mixer options reach the right layer
    idx = prompt(t=6)
    logits, _ = model(idx)
    assert logits.shape == (2, 6, VOCAB)
    assert torch.equal(model.generate(idx, 6), slow_greedy(model, idx, 6))
    state = model.init_state(2)
    _, state = model(idx, state)
    assert [s.mixer for s in state.mixers] == ["softmax_attention", "gla"]
    assert all(c is not None for c in state.convs)
    sub = state.select([1])
    assert all(s.batch_size == 1 for s in sub.mixers)
    assert state.nbytes() > 0
    assert model.state_size(1, 6) > 0


def test_mixer_list_length_must_match_n_layers() -> None:
    with pytest.raises(ValueError, match="n_layers"):
        LMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_heads=N_HEADS, n_layers=3,
                 mixer=["softmax_attention", "gla"])


def test_mixer_options_for_unused_mixer_refused() -> None:
    with pytest.raises(ValueError, match="retention"):
        LMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_heads=N_HEADS, n_layers=1, mixer="gla",
                 mixer_options={"retention": {"chunk_size": 8}})


def test_unknown_mixer_refused() -> None:
    with pytest.raises(UnknownNameError, match="gla"):
        LMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_heads=N_HEADS, n_layers=1, mixer="gla2")


@pytest.mark.parametrize("k", [1, -1])
def test_bad_short_conv_refused(k: int) -> None:
    with pytest.raises(ValueError, match="short_conv"):
        LMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_heads=N_HEADS, n_layers=1, short_conv=k)


def test_bad_mixer_option_value_reaches_the_mixer() -> None:
    cfg = LMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_heads=N_HEADS, n_layers=1,
                   mixer="sliding_window_attention",
                   mixer_options={"sliding_window_attention": {"window": 0}})
    with pytest.raises(ValueError, match="window"):
        LongCtxLM(cfg)


@pytest.mark.parametrize("bad", [
    torch.zeros(2, 5),                       # float
    torch.zeros(2, 5, dtype=torch.bool),     # bool
    torch.zeros(5, dtype=torch.long),        # rank 1
    torch.zeros(2, 5, 1, dtype=torch.long),  # rank 3
])
def test_bad_idx_refused(bad: torch.Tensor) -> None:
    model = make_lm("gla", n_layers=1)
    with pytest.raises(ValueError, match="idx"):
        model(bad)


def test_int32_idx_accepted() -> None:
    model = make_lm("gla", n_layers=1)
    idx = prompt()
    a, _ = model(idx)
    b, _ = model(idx.to(torch.int32))
    assert torch.equal(a, b)


def test_wrong_state_type_refused() -> None:
    model = make_lm("gla", n_layers=2)
    idx = prompt()
    with pytest.raises(ValueError, match="LMState"):
        model(idx, model.mixers[0].init_state(2))
    with pytest.raises(ValueError, match="LMState"):
        model(idx, {"mixers": []})
    other = make_lm("gla", n_layers=1)
    with pytest.raises(ValueError, match="layers"):
        model(idx, other.init_state(2))
    wrong_mixer = make_lm("retention", n_layers=2)
    with pytest.raises(ValueError, match="retention"):
        model(idx, wrong_mixer.init_state(2))


def test_tied_head_shares_embedding() -> None:
    model = make_lm("gla", n_layers=1)
    assert model.head.weight is model.embed.weight
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()
    n_unique = sum(p.numel() for p in model.parameters())
    assert n_unique < sum(p.numel() for p in model.state_dict().values())
    with torch.no_grad():
        model.embed.weight[3].fill_(0.25)
    assert torch.all(model.head.weight[3] == 0.25)
    untied = make_lm("gla", n_layers=1, tie_embeddings=False)
    assert untied.head.weight is not untied.embed.weight


def test_sampling_with_generator_is_reproducible() -> None:
    model = make_lm("retention", n_layers=1)
    idx = prompt()
    a = model.generate(idx, 6, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(idx, 6, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 11)
    assert int(a.max()) < VOCAB and int(a.min()) >= 0


def test_lm_state_size_matches_state() -> None:
    model = make_lm("softmax_attention", short_conv=4)
    idx = prompt(t=7)
    state = model.init_state(2, dtype=torch.float32)
    model32 = model.float()
    _, state = model32(idx, state)
    assert model32.state_size(2, 7) == state.nbytes()


def test_lm_state_to_dtype() -> None:
    model = make_lm("retention", short_conv=4)
    state = model.init_state(2)
    _, state = model(prompt(), state)
    by_kw = state.to(dtype=torch.float32)
    assert by_kw.mixers[0].S.dtype == torch.float32
    assert by_kw.mixers[0].n_seen.dtype == torch.int64
    assert by_kw.convs[0].buf.dtype == torch.float32
    by_pos = state.to(torch.float32)  # the torch.Tensor.to habit
    assert by_pos.mixers[0].S.dtype == torch.float32

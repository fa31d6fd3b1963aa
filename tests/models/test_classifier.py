"""LongCtxClassifier: shapes, the two-direction construction, gradients, no decode, ListOps."""

from __future__ import annotations

import pytest
import torch

from longctx.models import ClassifierConfig, LMConfig, LongCtxClassifier, LongCtxLM
from longctx.tasks.listops import ListOpsConfig, make_listops
from longctx.train import TrainConfig, evaluate, train
from longctx.train.loop import aligned_targets
from tests.helpers import assert_close

VOCAB, D_MODEL, N_HEADS = 24, 16, 2
CHEAP = {"softmax_attention": {}, "gla": {"chunk_size": 4}, "s4d": {}, "mamba2": {"chunk_size": 4}}


def make(mixer: str = "gla", bidirectional: bool = True, pooling: str = "mean", n_layers: int = 2,
         options: dict | None = None) -> LongCtxClassifier:
    options = CHEAP.get(mixer, {}) if options is None else options
    cfg = ClassifierConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=n_layers, n_heads=N_HEADS,
                           mixer=mixer, mixer_options={mixer: options} if options else {},
                           pooling=pooling, bidirectional=bidirectional)
    torch.manual_seed(0)
    model = LongCtxClassifier(cfg)
    with torch.no_grad():  # larger than the 0.02 init, so a change of one token shows
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.double().eval()


def tokens(b: int = 2, t: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_shapes(pooling):
    model = make(pooling=pooling)
    x = tokens()
    logits, state = model(x)
    assert logits.shape == (2, 1, VOCAB) and state is None
    assert model.encode(x).shape == (2, 11, D_MODEL)
    assert len(model.mixers) == 4  # two layers x two directions


def test_late_token_reaches_first_position_only_when_bidirectional():
    x = tokens()
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % VOCAB  # change the last token
    for bidirectional in (True, False):
        model = make(bidirectional=bidirectional)
        with torch.no_grad():
            hx, hy = model.encode(x), model.encode(y)  # [B, T, d]
            changed = (hx[:, :-1] - hy[:, :-1]).abs().amax().item()
            assert (changed > 1e-6) == bidirectional  # earlier positions see the later token
            assert not torch.allclose(model(x)[0], model(y)[0])  # the pooled output sees it always


def test_swapping_directions_reverses_time():
    """The construction is symmetric: exchanging the forward and backward weights and reversing
    the input reverses the features, so mean pooling gives the same logits."""
    model = make("gla")
    swapped = make("gla")
    for a, b in zip(model.blocks, swapped.blocks):
        b.mixer.forward_mixer.load_state_dict(a.mixer.backward_mixer.state_dict())
        b.mixer.backward_mixer.load_state_dict(a.mixer.forward_mixer.state_dict())
    x = tokens()
    with torch.no_grad():
        assert_close(model.encode(x), swapped.encode(x.flip(1)).flip(1), 1e-12)
        assert_close(model(x)[0], swapped(x.flip(1))[0], 1e-12)


def test_unidirectional_last_pooling_is_the_lm_at_its_last_position():
    """bidirectional=False, pooling="last" is LongCtxLM (untied head) read at the last position."""
    model = make("gla", bidirectional=False, pooling="last")
    lm = LongCtxLM(LMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=2, n_heads=N_HEADS,
                            mixer="gla", mixer_options={"gla": CHEAP["gla"]},
                            tie_embeddings=False)).double().eval()
    lm.load_state_dict({k.replace("mixer.forward_mixer.", "mixer."): v
                        for k, v in model.state_dict().items()})
    x = tokens()
    with torch.no_grad():
        assert_close(lm(x)[0][:, -1:], model(x)[0], 1e-12)


def test_mask_pooling_ignores_masked_positions():
    model = make("gla")
    x = tokens()
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, :3] = False
    with torch.no_grad():
        h = model.encode(x)
        want = model.head(h[:, 3:].mean(dim=1)).unsqueeze(1)
        assert_close(model(x, mask=mask)[0], want, 1e-12)
        assert_close(model(x, mask=torch.ones_like(mask))[0], model(x)[0], 1e-12)


def test_gradients_reach_both_directions():
    model = make("gla").train()
    logits, _ = model(tokens())
    logits.square().sum().backward()
    for i, block in enumerate(model.blocks):
        for direction in ("forward_mixer", "backward_mixer"):
            grads = [p.grad for p in getattr(block.mixer, direction).parameters()]
            assert grads and all(g is not None for g in grads), (i, direction)
            assert sum(g.abs().sum().item() for g in grads) > 0, (i, direction)


def test_decode_step_is_refused():
    model = make("gla")
    with pytest.raises(ValueError, match="a decode step on a model configured bidirectional"):
        model(tokens(), state=object())
    with pytest.raises(ValueError, match="a decode step on a model configured bidirectional"):
        model.init_state(2)
    with pytest.raises(ValueError, match="no decode state"):
        make("gla", bidirectional=False)(tokens(), state=object())


@pytest.mark.parametrize("mixer", list(CHEAP))
def test_registry_mixers_build_and_run(mixer):
    model = make(mixer, n_layers=1)
    logits, _ = model(tokens(t=9))
    assert logits.shape == (2, 1, VOCAB) and torch.isfinite(logits).all()
    one_way = sum(m.state_size(1, 9) for m in model.mixers[:1])
    assert model.state_size(1, 9) == 2 * one_way  # both directions carry a state


def test_mixers_that_are_bidirectional_themselves_run_once():
    native = make("softmax_attention", n_layers=1, options={"causal": False})
    assert len(native.mixers) == 1
    linformer = make("linformer", n_layers=1, options={"k": 4})
    assert len(linformer.mixers) == 1
    assert linformer(tokens(t=9))[0].shape == (2, 1, VOCAB)
    assert linformer.state_size(1, 9) == 2 * 9 * D_MODEL * 4  # no recurrent form: whole-sequence K, V


def test_config_errors():
    with pytest.raises(ValueError, match="pooling"):
        ClassifierConfig(pooling="max")
    with pytest.raises(ValueError, match="bidirectional"):
        ClassifierConfig(bidirectional="yes")
    with pytest.raises(ValueError, match="linformer.*configured bidirectional"):
        ClassifierConfig(mixer="linformer", bidirectional=False)
    with pytest.raises(ValueError, match="n_layers"):
        ClassifierConfig(mixer=["gla"], n_layers=2)


def test_aligned_targets():
    targets = torch.full((2, 5), -100)
    targets[:, -1] = 3
    assert aligned_targets(torch.zeros(2, 5, 7), targets) is targets
    assert aligned_targets(torch.zeros(2, 1, 7), targets).tolist() == [[3], [3]]
    targets[0, 2] = 1  # a position before the last is scored: a classifier cannot answer it
    with pytest.raises(ValueError, match="scores positions before"):
        aligned_targets(torch.zeros(2, 1, 7), targets)
    with pytest.raises(ValueError, match="6 positions"):
        aligned_targets(torch.zeros(2, 6, 7), targets)


def test_trains_on_tiny_listops():
    data = make_listops(ListOpsConfig(seq_len=32, min_len=5, max_len=24, num_train=256, num_test=64))
    cfg = ClassifierConfig(vocab_size=data.vocab_size, d_model=32, n_layers=1, n_heads=2,
                           mixer="gla", mixer_options={"gla": {"chunk_size": 8}})
    torch.manual_seed(0)
    model = LongCtxClassifier(cfg)
    _, loss_before = evaluate(model, data.test)
    result = train(model, data, TrainConfig(steps=40, batch_size=32, lr=3e-3), progress=False)
    assert result.loss < loss_before - 0.3, (loss_before, result.loss)
    assert 0.0 <= result.accuracy <= 1.0

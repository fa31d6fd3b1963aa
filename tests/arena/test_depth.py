"""Needle depth read back from passkey / NIAH examples, and accuracy by depth bin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from longctx.arena.depth import depth_breakdown, example_scores, needle_depths, passkey_depth_grid
from longctx.models import LMConfig, LongCtxLM
from longctx.tasks.base import IGNORE_INDEX, Batch
from longctx.tasks.niah import NIAHConfig, make_niah
from longctx.tasks.passkey import PasskeyConfig, _examples, minimum_length, passkey_grid


def test_passkey_depths_match_the_generator() -> None:
    """Fixed depths come back exactly; random depths within one filler byte."""
    for (length, depth), batch in passkey_grid([300, 600], [0.0, 0.3, 1.0], n=3).items():
        assert np.allclose(needle_depths("passkey", batch), depth, atol=1 / length)
    cfg = PasskeyConfig(seq_len=400, num_train=1, num_test=50)
    batch, depths = _examples(cfg, 50, np.random.default_rng([7, 1]))
    fill = cfg.seq_len + 1 - minimum_length(cfg.digits)
    assert np.abs(needle_depths("passkey", batch) - depths).max() <= 0.5 / fill + 1e-12
    assert depths.std() > 0.2  # the test set really spreads the key over depths


def test_niah_synthetic_depths() -> None:
    cfg = NIAHConfig(seq_len=128, haystack="synthetic", vocab_size=64, depth=0.4, num_train=1,
                     num_test=16)
    found = needle_depths("niah", make_niah(cfg).test, {"haystack": "synthetic"})
    room = cfg.seq_len + 1 - 3 - 3
    assert np.allclose(found, 0.4, atol=1 / room)
    multi = NIAHConfig(seq_len=128, haystack="synthetic", vocab_size=64, kind="multikey",
                       num_train=1, num_test=32)
    found = needle_depths("niah", make_niah(multi).test, {"haystack": "synthetic"})
    assert found.min() >= 0 and found.max() <= 1 and found.std() > 0.1


def test_niah_text_depths() -> None:
    """Needles snap back to a sentence start: the read-back depth is at most the asked one,
    and equals it for most examples."""
    cfg = NIAHConfig(seq_len=512, depth=0.5, num_train=1, num_test=24)
    found = needle_depths("niah", make_niah(cfg).test)
    assert (found <= 0.5 + 0.01).all() and np.mean(np.abs(found - 0.5) < 0.01) > 0.4


class PeekingModel(nn.Module):
    """Predicts the next input token (so every scored position but the last is right) when the
    example's needle is in the first half, and token 0 everywhere otherwise."""

    def __init__(self, task: str, vocab: int = 256) -> None:
        super().__init__()
        self.task, self.vocab = task, vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        scored = torch.full_like(x, IGNORE_INDEX)
        scored[:, -5:] = 0  # the answer's 5 digits: what the depth read-back needs to know
        depth = needle_depths(self.task, Batch(x, scored))
        nxt = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)
        nxt[torch.from_numpy(depth >= 0.5)] = 0
        return torch.nn.functional.one_hot(nxt, self.vocab).float(), None


def test_depth_breakdown_bins_accuracy() -> None:
    cfg = PasskeyConfig(seq_len=300, num_train=1, num_test=40)
    batch, _ = _examples(cfg, 40, np.random.default_rng([3, 1]))
    depths = needle_depths("passkey", batch)  # the generator's, to within a filler byte
    records = depth_breakdown(PeekingModel("passkey"), "passkey", batch, bins=2, batch_size=7)
    assert [(r["depth_lo"], r["depth_hi"]) for r in records] == [(0.0, 0.5), (0.5, 1.0)]
    assert [r["accuracy"] for r in records] == [pytest.approx(4 / 5), 0.0]  # 5 digits, last unseen
    assert [r["examples"] for r in records] == [int((depths < 0.5).sum()),
                                                int((depths >= 0.5).sum())]
    assert all(r["length"] == 300 and r["depth"] in (0.25, 0.75) for r in records)
    correct, scored = example_scores(PeekingModel("passkey"), batch, batch_size=16)
    assert correct.shape == scored.shape == (40,) and (scored == 5).all()


def test_passkey_depth_grid() -> None:
    records = passkey_depth_grid(PeekingModel("passkey"), [300, 350], [0.2, 0.8], n=3)
    grid = {(r["length"], r["depth"]): r["accuracy"] for r in records}
    assert grid == {(300, 0.2): pytest.approx(0.8), (300, 0.8): 0.0,
                    (350, 0.2): pytest.approx(0.8), (350, 0.8): 0.0}
    assert all(r["depth_lo"] == r["depth_hi"] == r["depth"] for r in records)


def test_with_a_real_model_as_the_runner_calls_it() -> None:
    """The runner's call: a LongCtxLM, the task's test set and options; bins cover every
    example once."""
    opts = {"seq_len": 96, "haystack": "synthetic", "vocab_size": 32, "kind": "multikey",
            "num_train": 1, "num_test": 24}
    data = make_niah(NIAHConfig(**opts), seed=0)
    torch.manual_seed(0)
    model = LongCtxLM(LMConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2))
    records = depth_breakdown(model, "niah", data.test, opts)
    assert sum(r["examples"] for r in records) == 24
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["length"] == 96 for r in records)


def test_bad_arguments() -> None:
    batch = passkey_grid([300], [0.5], n=2)[(300, 0.5)]
    with pytest.raises(ValueError, match="task must be one of"):
        needle_depths("mqar", batch)
    with pytest.raises(ValueError, match="haystack"):
        needle_depths("niah", batch, {"haystack": "ocean"})
    with pytest.raises(ValueError, match="bins must be a positive int"):
        depth_breakdown(PeekingModel("passkey"), "passkey", batch, bins=0)
    with pytest.raises(ValueError, match="lengths and depths"):
        passkey_depth_grid(PeekingModel("passkey"), [], [0.5])

"""The byte-level language-modelling task on the shipped corpora."""

from __future__ import annotations

import pytest
import torch

from longctx.tasks.base import IGNORE_INDEX
from longctx.tasks.corpus import load_text
from longctx.tasks.corpus_lm import CorpusLMConfig, make_corpus_lm
from longctx.tasks.registry import build_task


def test_windows_are_next_byte_pairs_from_the_right_split() -> None:
    data = build_task("corpus_lm", seed=3, seq_len=48, num_train=20, num_test=6)
    assert data.vocab_size == 256 and data.seq_len == 48
    assert data.train.inputs.shape == (20, 48) and data.test.inputs.shape == (6, 48)
    for batch in (data.train, data.test):
        assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])  # targets = next byte
        assert not (batch.targets == IGNORE_INDEX).any()  # every position is scored
    test_text = load_text("shakespeare", "test").encode()
    train_text = load_text("shakespeare", "train").encode()
    for row in data.test.inputs[:3]:
        window = bytes(row.tolist())
        assert window in test_text
    assert bytes(data.train.inputs[0].tolist()) in train_text


def test_deterministic_by_seed() -> None:
    a, b, c = (make_corpus_lm(CorpusLMConfig(seq_len=32, num_train=8, num_test=4), seed=s)
               for s in (1, 1, 2))
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.inputs, b.test.inputs)
    assert not torch.equal(a.train.inputs, c.train.inputs)


@pytest.mark.parametrize("kwargs,match", [
    ({"seq_len": 0}, "seq_len"), ({"num_test": -1}, "num_test"), ({"corpus": "wiki"}, "corpus"),
    ({"corpus": 3}, "corpus"),
])
def test_bad_config_is_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CorpusLMConfig(**kwargs)

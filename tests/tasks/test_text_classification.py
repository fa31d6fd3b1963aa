"""Byte-level text classification (LRA Text from shipped corpora): layout, determinism, balanced
classes, labels that name the passage's real source, train/test text disjoint, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longctx.tasks import IGNORE_INDEX, build_task
from longctx.tasks.text_classification import (
    CLASS0,
    QUERY,
    TextClassificationConfig,
    class_names,
    classes,
    make_text_classification,
)

CFG = {"seq_len": 129, "num_classes": 5, "num_train": 60, "num_test": 30}


def data(seed: int = 0, **kw):
    return make_text_classification(TextClassificationConfig(**{**CFG, **kw}), seed=seed)


def labels(batch) -> np.ndarray:
    return (batch.targets[:, -1] - CLASS0).numpy()


def passage(batch, i: int) -> bytes:
    return bytes(batch.inputs[i, :-1].tolist())


def test_registered_and_layout() -> None:
    d = build_task("text_classification", seed=0, **CFG)
    assert torch.equal(d.train.inputs, data(0).train.inputs)
    assert d.vocab_size == CLASS0 + 5 and d.seq_len == 129
    assert d.train.inputs.shape == d.train.targets.shape == (60, 129)
    assert d.test.inputs.shape == (30, 129)
    for b in (d.train, d.test):
        assert b.inputs.dtype == b.targets.dtype == torch.int64
        assert (b.inputs[:, -1] == QUERY).all() and int(b.inputs[:, :-1].max()) < 256
        assert int(b.inputs.min()) >= 0
        assert (b.targets[:, :-1] == IGNORE_INDEX).all()  # scored at the last position only
        assert ((b.targets[:, -1] >= CLASS0) & (b.targets[:, -1] < d.vocab_size)).all()


def test_deterministic_by_seed() -> None:
    a, b, c = data(3), data(3), data(4)
    for split in ("train", "test"):
        for field in ("inputs", "targets"):
            ta, tb, tc = (getattr(getattr(x, split), field) for x in (a, b, c))
            assert torch.equal(ta, tb)
            assert not torch.equal(ta, tc)


def test_train_is_independent_of_num_test() -> None:
    assert torch.equal(data(num_test=7).train.inputs, data(num_test=30).train.inputs)


@pytest.mark.parametrize("n_train, n_test", [(60, 30), (23, 11)])
def test_balanced_classes(n_train: int, n_test: int) -> None:
    d = data(num_train=n_train, num_test=n_test)
    for b in (d.train, d.test):
        counts = np.bincount(labels(b), minlength=5)
        assert counts.max() - counts.min() <= 1 and counts.sum() == len(b)


def test_labels_name_the_source_and_test_text_is_held_out() -> None:
    cfg = TextClassificationConfig(**CFG)
    d = make_text_classification(cfg, seed=1)
    works = [ws[0] for ws in classes(cfg)]
    assert class_names(cfg) == [w.title for w in works]
    assert works[0].title == "Hamlet"  # the longest play
    for i, c in enumerate(labels(d.train)):
        assert passage(d.train, i) in works[c].train
    for i, c in enumerate(labels(d.test)):
        text = passage(d.test, i)
        assert text in works[c].test
        assert not any(text in w.train for w in works)  # never in any training region


def test_corpus_labels() -> None:
    cfg = TextClassificationConfig(**{**CFG, "labels": "corpus"})
    d = make_text_classification(cfg, seed=0)
    assert d.vocab_size == CLASS0 + 2 and class_names(cfg) == ["shakespeare", "kjv"]
    by_class = classes(cfg)
    for b, split in ((d.train, "train"), (d.test, "test")):
        assert set(labels(b)) == {0, 1}
        for i, c in enumerate(labels(b)):
            assert any(passage(b, i) in w.region(split) for w in by_class[c])


def test_nearest_centroid_beats_chance() -> None:
    """Learnable: byte histograms' nearest class centroid is right far more often than 1 in 10."""
    d = make_text_classification(TextClassificationConfig(num_train=400, num_test=200), seed=0)

    def hist(b) -> np.ndarray:
        h = np.stack([np.bincount(r, minlength=256) for r in b.inputs[:, :-1].numpy()]).astype(float)
        return h / np.linalg.norm(h, axis=1, keepdims=True)

    x, y = hist(d.train), labels(d.train)
    centroids = np.stack([x[y == c].mean(0) for c in range(10)])
    acc = ((hist(d.test) @ centroids.T).argmax(1) == labels(d.test)).mean()
    assert acc > 0.2, acc  # chance: 0.1


@pytest.mark.parametrize("kw, match", [
    ({"seq_len": 1}, "TextClassificationConfig.seq_len"),
    ({"seq_len": 0}, "TextClassificationConfig.seq_len"),
    ({"num_train": 0}, "TextClassificationConfig.num_train"),
    ({"num_test": -1}, "TextClassificationConfig.num_test"),
    ({"num_classes": 1}, "TextClassificationConfig.num_classes"),
    ({"num_classes": 2.0}, "TextClassificationConfig.num_classes"),
    ({"labels": "genre"}, "TextClassificationConfig.labels must be one of"),
    ({"corpus": "bible"}, "TextClassificationConfig.corpus must be one of"),
    ({"train_fraction": 1.0}, "TextClassificationConfig.train_fraction"),
    ({"train_fraction": True}, "TextClassificationConfig.train_fraction"),
])
def test_bad_config_refused(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TextClassificationConfig(**{**CFG, **kw})


def test_too_few_works_or_bytes_refused() -> None:
    with pytest.raises(ValueError, match="'shakespeare' has 38 works, fewer than the 39"):
        data(num_classes=39)
    with pytest.raises(ValueError, match=r"test part of 'Obadiah' has \d+ bytes.*lower seq_len"):
        data(corpus="kjv", num_classes=66, seq_len=1025)

"""Byte-level document matching (LRA Retrieval from shipped corpora): layout, determinism, 50/50
labels that say whether both passages really come from one work, train/test text disjoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longctx.tasks import IGNORE_INDEX, build_task
from longctx.tasks.retrieval import (
    CLASS0,
    QUERY,
    SAME,
    SEP,
    VOCAB,
    RetrievalConfig,
    make_retrieval,
    works,
)

CFG = {"seq_len": 130, "num_works": 6, "num_train": 40, "num_test": 20}  # passages of 64 bytes
P = 64


def data(seed: int = 0, **kw):
    return make_retrieval(RetrievalConfig(**{**CFG, **kw}), seed=seed)


def labels(batch) -> np.ndarray:
    return (batch.targets[:, -1] - CLASS0).numpy()


def pair(batch, i: int) -> tuple[bytes, bytes]:
    x = batch.inputs[i].tolist()
    return bytes(x[:P]), bytes(x[P + 1:-1])


def test_registered_and_layout() -> None:
    d = build_task("retrieval", seed=0, **CFG)
    assert torch.equal(d.test.inputs, data(0).test.inputs)
    assert d.vocab_size == VOCAB == 260 and SEP == 259 and d.seq_len == 130
    assert RetrievalConfig(**CFG).passage_bytes == P
    assert RetrievalConfig(seq_len=130, passage_len=64).passage_bytes == P
    assert d.train.inputs.shape == d.train.targets.shape == (40, 130)
    assert d.test.inputs.shape == (20, 130)
    for b in (d.train, d.test):
        assert b.inputs.dtype == b.targets.dtype == torch.int64
        assert (b.inputs[:, P] == SEP).all() and (b.inputs[:, -1] == QUERY).all()
        text = torch.cat([b.inputs[:, :P], b.inputs[:, P + 1:-1]], 1)
        assert int(text.min()) >= 0 and int(text.max()) < 256
        assert (b.targets[:, :-1] == IGNORE_INDEX).all()  # scored at the last position only
        assert set(labels(b).tolist()) == {0, 1}


def test_deterministic_by_seed() -> None:
    a, b, c = data(3), data(3), data(4)
    for split in ("train", "test"):
        for field in ("inputs", "targets"):
            ta, tb, tc = (getattr(getattr(x, split), field) for x in (a, b, c))
            assert torch.equal(ta, tb)
            assert not torch.equal(ta, tc)
    assert torch.equal(data(num_test=5).train.inputs, data(num_test=20).train.inputs)


@pytest.mark.parametrize("n", [40, 41])
def test_balanced_labels(n: int) -> None:
    d = data(num_train=n, num_test=n)
    for b in (d.train, d.test):
        assert abs(2 * int(labels(b).sum()) - n) <= 1


def test_labels_are_right_and_test_text_is_held_out() -> None:
    cfg = RetrievalConfig(**CFG)
    d = make_retrieval(cfg, seed=2)
    pool = works(cfg)
    assert len(pool) == 6 and pool[0].title == "Hamlet"
    for b, split in ((d.train, "train"), (d.test, "test")):
        for i, label in enumerate(labels(b)):
            a, c = pair(b, i)
            owner_a = [k for k, w in enumerate(pool) if a in w.region(split)]
            owner_c = [k for k, w in enumerate(pool) if c in w.region(split)]
            assert len(owner_a) == len(owner_c) == 1, "each passage is text of one work"
            assert (owner_a == owner_c) == (label == SAME)
            if label == SAME:  # two different, non-overlapping passages of the work
                region = pool[owner_a[0]].region(split)
                assert abs(region.find(a) - region.find(c)) >= P
            if split == "test":
                assert not any(a in w.train or c in w.train for w in pool)


def test_same_pairs_look_more_alike() -> None:
    """The label carries signal: byte histograms of "same" pairs are closer than of "different"."""
    d = make_retrieval(RetrievalConfig(num_train=2, num_test=400), seed=0)
    x, n = d.test.inputs.numpy(), 512

    def hist(z: np.ndarray) -> np.ndarray:
        h = np.stack([np.bincount(r, minlength=256) for r in z]).astype(float)
        return h / np.linalg.norm(h, axis=1, keepdims=True)

    sim = (hist(x[:, :n]) * hist(x[:, n + 1:-1])).sum(1)
    y = labels(d.test)
    assert sim[y == SAME].mean() > sim[y != SAME].mean()


@pytest.mark.parametrize("kw, match", [
    ({"seq_len": 129}, "RetrievalConfig.seq_len must be even"),
    ({"seq_len": 2}, "RetrievalConfig.seq_len must be even and >= 4"),
    ({"seq_len": 0}, "RetrievalConfig.seq_len"),
    ({"passage_len": 100}, r"RetrievalConfig: seq_len must be 2 \* passage_len \+ 2 = 202"),
    ({"passage_len": 0}, "RetrievalConfig.passage_len"),
    ({"num_train": 0}, "RetrievalConfig.num_train"),
    ({"num_test": 1.5}, "RetrievalConfig.num_test"),
    ({"num_works": 1}, "RetrievalConfig.num_works"),
    ({"corpus": "bible"}, "RetrievalConfig.corpus must be one of"),
    ({"train_fraction": 0.0}, "RetrievalConfig.train_fraction"),
])
def test_bad_config_refused(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetrievalConfig(**{**CFG, **kw})


def test_too_few_works_or_bytes_refused() -> None:
    with pytest.raises(ValueError, match="'kjv' has 66 works, fewer than the 67"):
        data(corpus="kjv", num_works=67)
    with pytest.raises(ValueError, match=r"test part of '.+' has \d+ bytes, fewer than two passages"):
        data(corpus="kjv", num_works=66, seq_len=2050)

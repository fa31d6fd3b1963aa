"""Generated-shape image classification: token layout, determinism, balance, learnability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longctx.tasks import IGNORE_INDEX, build_task
from longctx.tasks.images import CLASS0, CLASSES, QUERY, ImageConfig, make_images, render_images

CFG = {"num_train": 200, "num_test": 50}


def data(seed: int = 0, **kw):
    return make_images(ImageConfig(**{**CFG, **kw}), seed=seed)


def test_registered_and_layout() -> None:
    d = build_task("images", seed=0, **CFG)
    ref = data(0)
    assert torch.equal(d.train.inputs, ref.train.inputs) and torch.equal(d.test.targets, ref.test.targets)
    assert d.vocab_size == CLASS0 + 10 == 267 and d.seq_len == 1025
    for b, n in ((d.train, 200), (d.test, 50)):
        assert b.inputs.shape == b.targets.shape == (n, 1025)
        assert b.inputs.dtype == b.targets.dtype == torch.int64
        assert (b.inputs[:, -1] == QUERY).all()
        assert int(b.inputs[:, :-1].min()) >= 0 and int(b.inputs[:, :-1].max()) <= 255
        assert (b.targets[:, :-1] == IGNORE_INDEX).all()
        counts = torch.bincount(b.targets[:, -1] - CLASS0, minlength=10)
        assert counts.tolist() == [n // 10] * 10  # balanced


def test_deterministic_by_seed_and_splits_differ() -> None:
    a, b, c = data(3), data(3), data(4)
    for split in ("train", "test"):
        for field in ("inputs", "targets"):
            assert torch.equal(getattr(getattr(a, split), field), getattr(getattr(b, split), field))
            assert not torch.equal(getattr(getattr(a, split), field), getattr(getattr(c, split), field))
    assert not torch.equal(a.train.inputs[:50], a.test.inputs)
    assert torch.equal(data(num_test=7).train.inputs, data().train.inputs)  # train ignores num_test


def test_fewer_classes_and_other_sizes() -> None:
    d = data(n_classes=3, image_size=20, seq_len=401, num_train=30, num_test=9)
    assert d.vocab_size == CLASS0 + 3 and d.train.inputs.shape == (30, 401)
    assert set((d.train.targets[:, -1] - CLASS0).tolist()) == {0, 1, 2}


def test_every_class_draws_a_visible_shape() -> None:
    """Without noise or texture the shape is the only thing off the background level."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 20)
    img = render_images(labels, 32, 0.0, rng).astype(np.int64)
    for c in range(len(CLASSES)):
        x = img[labels == c]
        spread = x.max((1, 2)) - x.min((1, 2))
        assert (spread >= 40).all(), CLASSES[c]  # foreground contrast is at least 40 levels


def test_learnable_beyond_chance() -> None:
    """A logistic regression on log |FFT| (translation-invariant) pixel features beats chance."""
    d = data(seed=0, num_train=1500, num_test=500)

    def feats(b):
        x = b.inputs[:, :-1].double().reshape(-1, 32, 32)
        x = (x - x.mean((1, 2), keepdim=True)) / (x.std((1, 2), keepdim=True) + 1e-6)
        return torch.log1p(torch.fft.rfft2(x).abs()).reshape(len(x), -1).float()

    xtr, xte = feats(d.train), feats(d.test)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ytr, yte = d.train.targets[:, -1] - CLASS0, d.test.targets[:, -1] - CLASS0
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[1], 10)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=60)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xtr), ytr) + 1e-2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    acc = (lin(xte).argmax(1) == yte).float().mean().item()
    assert acc > 0.2, acc  # chance is 0.1


@pytest.mark.parametrize("kw,match", [
    ({"seq_len": 1000}, r"seq_len must be image_size\*\*2 \+ 1 = 1025"),
    ({"image_size": 16}, "seq_len must be image_size"),
    ({"image_size": 8, "seq_len": 65}, "image_size"),
    ({"n_classes": 1}, "n_classes"),
    ({"n_classes": 11}, "n_classes"),
    ({"noise": -1.0}, "noise"),
    ({"noise": "high"}, "noise"),
    ({"num_train": 0}, "num_train"),
    ({"num_test": 2.5}, "num_test"),
])
def test_bad_config_refused(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImageConfig(**kw)

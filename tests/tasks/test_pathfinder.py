"""Pathfinder: token layout, determinism, balance, and labels checked by an independent flood fill."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longctx.tasks import IGNORE_INDEX, build_task
from longctx.tasks.images import CLASS0, QUERY
from longctx.tasks.pathfinder import PathfinderConfig, draw_pathfinder, make_pathfinder

CFG = {"num_train": 120, "num_test": 40}


def data(seed: int = 0, **kw):
    return make_pathfinder(PathfinderConfig(**{**CFG, **kw}), seed=seed)


def images_and_labels(batch, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    x = batch.inputs[:, :-1].numpy().reshape(-1, size, size)
    return x, batch.targets[:, -1].numpy() - CLASS0


def components(ink: np.ndarray, link: int = 2) -> np.ndarray:
    """Labels ``[N, S, S]`` (-1 off ink) of the ink's components when pixels within Chebyshev
    ``link`` are joined (for link 2: a 2 x 2 dilation + 8-connectivity), by min-label propagation."""
    n, s, _ = ink.shape
    big = n * s * s
    lab = np.where(ink, np.arange(big).reshape(n, s, s), big)
    while True:
        pad = np.pad(lab, ((0, 0), (link, link), (link, link)), constant_values=big)
        low = lab.copy()
        for dy in range(2 * link + 1):
            for dx in range(2 * link + 1):
                low = np.minimum(low, pad[:, dy:dy + s, dx:dx + s])
        low = np.where(ink, low, big)
        if np.array_equal(low, lab):
            return np.where(ink, lab, -1)
        lab = low


def marker_centres(ink: np.ndarray) -> list[list[tuple[int, int]]]:
    """Centres of 3 x 3 all-ink blocks: only markers have them (paddles are 2-pixel dashes)."""
    n, s, _ = ink.shape
    full = np.ones((n, s - 2, s - 2), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            full &= ink[:, dy:dy + s - 2, dx:dx + s - 2]
    return [[(int(y) + 1, int(x) + 1) for y, x in zip(*np.nonzero(f))] for f in full]


def test_registered_and_layout() -> None:
    d = build_task("pathfinder", seed=0, **CFG)
    ref = data(0)
    assert torch.equal(d.train.inputs, ref.train.inputs) and torch.equal(d.test.targets, ref.test.targets)
    assert d.vocab_size == CLASS0 + 2 == 259 and d.seq_len == 32 * 32 + 1
    for b, n in ((d.train, 120), (d.test, 40)):
        assert b.inputs.shape == b.targets.shape == (n, 1025)
        assert b.inputs.dtype == b.targets.dtype == torch.int64
        assert (b.inputs[:, -1] == QUERY).all()
        assert int(b.inputs[:, :-1].min()) >= 0 and int(b.inputs[:, :-1].max()) <= 255
        assert (b.targets[:, :-1] == IGNORE_INDEX).all()
        assert set(b.targets[:, -1].tolist()) == {CLASS0, CLASS0 + 1}
        assert (b.targets[:, -1] == CLASS0 + 1).sum() == n // 2  # balanced


def test_deterministic_by_seed_and_splits_differ() -> None:
    a, b, c = data(3), data(3), data(4)
    for split in ("train", "test"):
        assert torch.equal(getattr(a, split).inputs, getattr(b, split).inputs)
        assert not torch.equal(getattr(a, split).inputs, getattr(c, split).inputs)
    assert not torch.equal(a.train.inputs[:40], a.test.inputs)
    assert torch.equal(data(num_test=5).train.inputs, data(0).train.inputs)  # train ignores num_test


@pytest.mark.parametrize("kw", [{}, {"contour_length": 6, "n_distractors": 4},
                                {"contour_length": 9, "n_distractors": 0, "max_turn_deg": 30.0}])
def test_labels_match_connectivity(kw: dict) -> None:
    """Each snake is one component of the linked ink, and label 1 <=> both markers in one."""
    cfg = PathfinderConfig(**{**CFG, **kw})
    d = make_pathfinder(cfg, seed=1)
    x, y = images_and_labels(d.train)
    ink = x > 0
    lab = components(ink)
    centres = marker_centres(ink)
    for i in range(len(x)):
        assert len(centres[i]) == 2, f"image {i}: {len(centres[i])} markers"
        (ay, ax), (by, bx) = centres[i]
        assert int(lab[i, ay, ax] == lab[i, by, bx]) == y[i], f"image {i}: label {y[i]}"
        assert len(np.unique(lab[i][ink[i]])) == 2 + cfg.n_distractors  # one component per snake
        # every snake pixel is drawn once: 2 px per paddle, plus 7 marker pixels past each end's 2
        expected = 2 * (2 * cfg.contour_length + cfg.n_distractors * cfg.distractor_length) + 2 * 7
        assert ink[i].sum() == expected
        assert len(np.unique(x[i])) == 2  # background 0 and one ink level


def test_draw_returns_the_marker_centres() -> None:
    labels = np.array([0, 1] * 10)
    images, ends = draw_pathfinder(labels, PathfinderConfig(), np.random.default_rng(0))
    lab = components(images > 0)
    for i, centres in enumerate(marker_centres(images > 0)):
        assert sorted(centres) == sorted(map(tuple, ends[i].tolist()))
        assert (lab[i, ends[i, 0, 0], ends[i, 0, 1]] == lab[i, ends[i, 1, 0], ends[i, 1, 1]]) == labels[i]


def test_path_x_size() -> None:
    d = data(image_size=128, seq_len=128**2 + 1, num_train=4, num_test=2)
    assert d.train.inputs.shape == (4, 16385) and d.seq_len == 16385 and d.vocab_size == 259
    labels = np.array([0, 1, 0, 1])
    cfg = PathfinderConfig(image_size=128, seq_len=128**2 + 1)
    images, ends = draw_pathfinder(labels, cfg, np.random.default_rng(0))
    lab = components(images > 0)
    for i in range(4):  # markers are discs of radius 4 here, centred on the snakes' ends
        assert len(np.unique(lab[i][images[i] > 0])) == 2 + cfg.n_distractors
        assert (lab[i, ends[i, 0, 0], ends[i, 0, 1]] == lab[i, ends[i, 1, 0], ends[i, 1, 1]]) == labels[i]


@pytest.mark.parametrize("kw,match", [
    ({"seq_len": 1024}, r"seq_len must be image_size\*\*2 \+ 1 = 1025"),
    ({"image_size": 64}, "seq_len must be image_size"),
    ({"image_size": 8, "seq_len": 65}, "image_size"),
    ({"contour_length": 0}, "contour_length"),
    ({"contour_length": 50}, "contour_length"),
    ({"n_distractors": -1}, "n_distractors"),
    ({"n_distractors": 1.0}, "n_distractors"),
    ({"distractor_length": 0}, "distractor_length"),
    ({"max_turn_deg": 0}, "max_turn_deg"),
    ({"max_turn_deg": 90}, "max_turn_deg"),
    ({"num_train": 0}, "num_train"),
    ({"num_test": True}, "num_test"),
])
def test_bad_config_refused(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PathfinderConfig(**kw)


def test_impossible_layout_is_refused() -> None:
    with pytest.raises(RuntimeError, match="could not place"):
        data(n_distractors=60, distractor_length=10, num_train=4, num_test=2)

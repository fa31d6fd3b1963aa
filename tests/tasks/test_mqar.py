"""MQAR: deterministic data whose scored positions are exactly the key queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longctx.errors import UnknownNameError
from longctx.tasks import IGNORE_INDEX, MQARConfig, build_task, make_mqar, task_names
from longctx.tasks.mqar import _distinct, _examples

CFG = {"vocab_size": 64, "seq_len": 48, "num_kv_pairs": 6, "num_train": 40, "num_test": 20}


def data(seed: int = 0, **kw):
    return make_mqar(MQARConfig(**{**CFG, **kw}), seed=seed)


def test_registered() -> None:
    assert "mqar" in task_names()
    d = build_task("mqar", seed=0, **CFG)
    ref = data(0)
    assert torch.equal(d.train.inputs, ref.train.inputs)
    assert torch.equal(d.test.targets, ref.test.targets)


def test_shapes_and_dtypes() -> None:
    d = data()
    assert d.vocab_size == 64 and d.seq_len == 48
    assert d.train.inputs.shape == d.train.targets.shape == (40, 48)
    assert d.test.inputs.shape == (20, 48)
    assert len(d.train) == 40 and len(d.test) == 20
    for b in (d.train, d.test):
        assert b.inputs.dtype == b.targets.dtype == torch.int64
        assert int(b.inputs.min()) >= 0 and int(b.inputs.max()) < 64


def test_deterministic_by_seed() -> None:
    a, b, c = data(3), data(3), data(4)
    for split in ("train", "test"):
        for field in ("inputs", "targets"):
            ta, tb, tc = (getattr(getattr(x, split), field) for x in (a, b, c))
            assert torch.equal(ta, tb), f"{split}.{field} differs for the same seed"
            assert not torch.equal(ta, tc), f"{split}.{field} equal for different seeds"


def test_train_and_test_differ() -> None:
    d = data(num_train=20, num_test=20)
    assert not torch.equal(d.train.inputs, d.test.inputs)
    assert not torch.equal(d.train.targets, d.test.targets)


def test_train_is_independent_of_num_test() -> None:
    assert torch.equal(data(num_test=5).train.inputs, data(num_test=20).train.inputs)


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_structure(random_non_queries: bool) -> None:
    d = data(seed=7, random_non_queries=random_non_queries)
    V, kv = 64, 6
    half = V // 2
    ctx = 2 * kv
    for batch in (d.train, d.test):
        for x, y in zip(batch.inputs.tolist(), batch.targets.tolist()):
            keys, values = x[0:ctx:2], x[1:ctx:2]
            assert all(1 <= k < half for k in keys), keys
            assert all(half <= v < V for v in values), values
            assert len(set(keys)) == kv, "keys of one example are distinct"
            pairs = dict(zip(keys, values))
            scored = [t for t, target in enumerate(y) if target != IGNORE_INDEX]
            assert len(scored) == kv, f"{len(scored)} scored positions, expected {kv}"
            assert all(t >= ctx for t in scored), "no score inside the context"
            assert {x[t] for t in scored} == set(keys), "each key is queried exactly once"
            for t in scored:
                assert x[t] in pairs, f"input at scored position {t} is not a key"
                assert y[t] == pairs[x[t]], f"target at {t} is not the value of key {x[t]}"
            if not random_non_queries:
                # everything outside context and queries is the pad token 0
                rest = [x[t] for t in range(ctx, len(x)) if t not in scored]
                assert set(rest) <= {0}


def test_queries_favour_early_positions() -> None:
    d = data(seed=0, num_train=400, seq_len=96, num_kv_pairs=4)
    pos = (d.train.targets != IGNORE_INDEX).nonzero()[:, 1].float()
    ctx = 8
    middle = ctx + (96 - ctx) / 2
    assert (pos < middle).float().mean() > 0.5  # power law with alpha 0.01 prefers short gaps


@pytest.mark.parametrize("size", [7, 5])  # k(k-1) = 6 <= 7: redraw rows with repeats; > 5: permutations
def test_distinct_draws_are_uniform_over_ordered_tuples(size: int) -> None:
    n, k = 60_000, 3
    x = _distinct(np.random.default_rng(0), n, k, 10, 10 + size)
    assert x.shape == (n, k) and x.min() >= 10 and x.max() < 10 + size
    assert (np.sort(x, 1)[:, 1:] != np.sort(x, 1)[:, :-1]).all(), "a row repeats a value"
    _, counts = np.unique(x, axis=0, return_counts=True)
    cells = size * (size - 1) * (size - 2)
    assert len(counts) == cells
    expected = n / cells
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < cells - 1 + 6 * (2 * (cells - 1)) ** 0.5, f"chi2 {chi2:.0f} over {cells} cells"


def test_query_gaps_follow_weighted_sampling_without_replacement() -> None:
    # each gap's inclusion frequency matches numpy's sequential weighted draw (rng.choice with p)
    cfg = MQARConfig(vocab_size=64, seq_len=28, num_kv_pairs=3, num_train=1, num_test=1, power_a=0.5)
    n, ctx = 40_000, 6
    pos = (_examples(cfg, n, np.random.default_rng(1)).targets != IGNORE_INDEX).nonzero()[:, 1]
    ours = np.bincount((pos.numpy() - ctx) // 2, minlength=11) / n  # target at the query key
    space = (cfg.seq_len - ctx) // 2
    p = np.arange(1, space + 1, dtype=np.float64) ** (cfg.power_a - 1)
    rng = np.random.default_rng(2)
    ref = np.bincount(np.concatenate([rng.choice(space, 3, replace=False, p=p / p.sum()) for _ in range(n)]),
                      minlength=space) / n
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 0.015, (ours.round(3), ref.round(3))


def test_minimal_config() -> None:
    d = data(seq_len=24, num_kv_pairs=6, vocab_size=14)  # seq_len == 4 kv; 6 keys in [1, 7)
    scored = (d.train.targets != IGNORE_INDEX).sum(1)
    assert torch.all(scored == 6)


@pytest.mark.parametrize("kw,match", [
    ({"seq_len": 23, "num_kv_pairs": 6}, "seq_len"),
    ({"vocab_size": 12, "num_kv_pairs": 6}, "vocab_size"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"seq_len": -4}, "seq_len"),
    ({"num_kv_pairs": 0}, "num_kv_pairs"),
    ({"num_train": 0}, "num_train"),
    ({"num_test": -1}, "num_test"),
    ({"num_train": 10.0}, "num_train"),
    ({"num_kv_pairs": True}, "num_kv_pairs"),
])
def test_bad_config_refused(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MQARConfig(**{**CFG, **kw})


def test_unknown_task_named() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_task("mqarr", seed=0)
    msg = str(info.value)
    assert "'mqarr'" in msg and "mqar" in msg.replace("'mqarr'", "")


def test_unknown_option_named() -> None:
    with pytest.raises(TypeError, match="num_kv_pair"):
        build_task("mqar", seed=0, **CFG, num_kv_pair=3)

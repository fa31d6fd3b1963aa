"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology", §3).

An example is ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...`` followed by a stretch in which
each key appears once more as a query; the model must emit the key's value right after it. Keys
come from the lower half of the vocabulary, values from the upper half; token 0 is never a key.
The gaps between the context and each query follow the zoology power law
``p(gap = g) ∝ g^(alpha - 1)`` (alpha = 0.01), which favours queries soon after the context.
Positions that are not queries hold random tokens; the loss is taken only at query positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longctx.ops.common import check_positive_int
from longctx.tasks.base import IGNORE_INDEX, Batch, TaskData


@dataclass
class MQARConfig:
    vocab_size: int = 8192  # keys from [1, vocab/2), values from [vocab/2, vocab)
    seq_len: int = 64  # tokens per example
    num_kv_pairs: int = 4  # key-value pairs in the context (= queries per example)
    num_train: int = 10_000  # training examples
    num_test: int = 1_000  # held-out examples (drawn from a different seed stream)
    power_a: float = 0.01  # exponent of the query-gap power law (zoology default)
    random_non_queries: bool = True  # fill non-query positions with random tokens (zoology)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "num_kv_pairs", "num_train", "num_test"):
            check_positive_int(f"MQARConfig.{name}", getattr(self, name))
        if self.seq_len < 4 * self.num_kv_pairs:
            raise ValueError(
                f"MQARConfig: seq_len={self.seq_len} is too short for num_kv_pairs={self.num_kv_pairs} "
                f"(needs >= 4 * num_kv_pairs = {4 * self.num_kv_pairs}: the context takes 2 tokens "
                "per pair and the queries need room for 2 tokens each)"
            )
        if self.vocab_size // 2 - 1 < self.num_kv_pairs:
            raise ValueError(
                f"MQARConfig: vocab_size={self.vocab_size} gives {self.vocab_size // 2 - 1} distinct "
                f"keys, fewer than num_kv_pairs={self.num_kv_pairs}"
            )


def _distinct(rng: np.random.Generator, n: int, k: int, low: int, high: int) -> np.ndarray:
    """[n, k] int64: per row, k distinct integers drawn uniformly from [low, high) (ordered)."""
    size = high - low
    if k * (k - 1) <= size:  # a row repeats with probability <= k(k-1)/(2 size) <= 1/2: redraw it
        out = rng.integers(low, high, size=(n, k))
        bad = np.arange(n)
        while True:
            srt = np.sort(out[bad], axis=1)
            bad = bad[(srt[:, 1:] == srt[:, :-1]).any(axis=1)]
            if bad.size == 0:
                return out
            out[bad] = rng.integers(low, high, size=(bad.size, k))
    # dense case: the first k of a random permutation per row, a block of rows at a time (memory)
    block = max(1, (1 << 22) // size)
    out = np.empty((n, k), dtype=np.int64)
    for i in range(0, n, block):
        j = min(n, i + block)
        out[i:j] = np.argsort(rng.random((j - i, size)), axis=1)[:, :k] + low
    return out


def _examples(cfg: MQARConfig, n: int, rng: np.random.Generator) -> Batch:
    ctx = 2 * cfg.num_kv_pairs
    half = cfg.vocab_size // 2
    keys = _distinct(rng, n, cfg.num_kv_pairs, 1, half)
    values = _distinct(rng, n, cfg.num_kv_pairs, half, cfg.vocab_size)
    # query slots: (seq_len - ctx) // 2 even offsets after the context, chosen without replacement
    # with weights p; the k largest u^(1/p) are such a draw (Efraimidis & Spirakis 2006, A-Res)
    space = (cfg.seq_len - ctx) // 2
    p = cfg.power_a * np.arange(1, space + 1, dtype=np.float64) ** (cfg.power_a - 1)
    p /= p.sum()
    score = np.log(rng.random((n, space))) / p  # log u / p: monotone in u^(1/p)
    gaps = np.argpartition(-score, cfg.num_kv_pairs - 1, axis=1)[:, : cfg.num_kv_pairs]
    seq = np.zeros((n, cfg.seq_len + 1), dtype=np.int64)
    seq[:, 0:ctx:2] = keys
    seq[:, 1:ctx:2] = values
    rows = np.arange(n)[:, None]
    qpos = ctx + 2 * gaps  # position of each query key
    seq[rows, qpos] = keys
    labels = np.full((n, cfg.seq_len + 1), IGNORE_INDEX, dtype=np.int64)
    labels[rows, qpos + 1] = values  # the value must be predicted at the next position
    inputs, targets = seq[:, :-1], labels[:, 1:]
    if cfg.random_non_queries:
        noise = rng.integers(0, cfg.vocab_size, size=inputs.shape)
        filler = np.ones_like(inputs, dtype=bool)
        filler[:, :ctx] = False
        filler[rows, qpos] = False
        inputs = np.where(filler, noise, inputs)
    return Batch(torch.from_numpy(np.ascontiguousarray(inputs)), torch.from_numpy(np.ascontiguousarray(targets)))


def make_mqar(cfg: MQARConfig, seed: int = 0) -> TaskData:
    """Deterministic MQAR train/test sets for ``seed`` (train and test use separate streams)."""
    train = _examples(cfg, cfg.num_train, np.random.default_rng([seed, 0]))
    test = _examples(cfg, cfg.num_test, np.random.default_rng([seed, 1]))
    return TaskData(train=train, test=test, vocab_size=cfg.vocab_size, seq_len=cfg.seq_len)

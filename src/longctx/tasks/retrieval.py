"""Byte-level document matching: Long Range Arena's "Retrieval" task (Tay et al. 2021, §3.3: two
ACL Anthology Network papers as bytes, 4K each, 8K in all; is one cited by the other?), rebuilt from
a corpus that ships inside a package: two passages of ``passage_len`` bytes, and the label is
whether both come from the same work.

The works are the ``num_works`` longest of ``corpus`` (30 by default: 30 of the 38 Shakespeare
plays, or the 30 longest books of the King James Bible). Half the pairs (exactly, up to one) are
"same": one work drawn uniformly, two non-overlapping passages of it; the other half "different":
two distinct works drawn uniformly, one passage each. Each passage alone is thus a uniformly drawn
work's, whatever the label: only comparing the two (speaker names, places, vocabulary) answers.
The passages sit ``passage_len + 1`` tokens apart, so the comparison spans the sequence.

Train and test passages never share text: each work is split by position (see
``longctx.tasks.text_classification``), its first ``train_fraction`` of bytes for training pairs,
the rest for test pairs.

As a causal-LM task: ``<passage A> SEP <passage B> QUERY``, ``seq_len = 2 * passage_len + 2``,
scored at the last position only. Token ids: bytes 0..255, ``QUERY = 256``, the answer tokens
``CLASS0 + label`` (257: different works, 258: the same work), ``SEP = 259``; ``vocab_size = 260``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longctx.layers.common import check_choice
from longctx.ops.common import check_positive_int
from longctx.tasks.base import IGNORE_INDEX, Batch, TaskData
from longctx.tasks.text_classification import (
    CLASS0,
    CORPUS_NAMES,
    QUERY,
    Work,
    balanced_labels,
    check_fraction,
    check_room,
    longest_works,
)

DIFFERENT, SAME = 0, 1  # labels; the answer token is CLASS0 + label
SEP = CLASS0 + 2  # 259: between the two passages
VOCAB = SEP + 1  # 260


@dataclass
class RetrievalConfig:
    seq_len: int = 1026  # 2 x 512 bytes + SEP + QUERY (LRA: 2 x 4K bytes, Tay et al. 2021 §3.3)
    passage_len: int | None = None  # bytes per passage; None: (seq_len - 2) // 2, seq_len even
    corpus: str = "shakespeare"  # the shipped corpus whose works the passages come from
    num_works: int = 30  # the num_works longest works of the corpus
    train_fraction: float = 0.8  # each work's first 80% of bytes for training pairs, rest test
    num_train: int = 5000  # training pairs (half "same", half "different")
    num_test: int = 500  # held-out pairs (from the held-out end of every work)

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("seq_len", "num_works", "num_train", "num_test"):
            check_positive_int(f"{name}.{f}", getattr(self, f))
        if self.passage_len is None:
            if self.seq_len % 2 or self.seq_len < 4:
                raise ValueError(f"{name}.seq_len must be even and >= 4 (2 * passage_len + 2), "
                                 f"got {self.seq_len}")
        else:
            check_positive_int(f"{name}.passage_len", self.passage_len)
            if self.seq_len != 2 * self.passage_len + 2:
                raise ValueError(f"{name}: seq_len must be 2 * passage_len + 2 = "
                                 f"{2 * self.passage_len + 2} (two passages, SEP, QUERY), "
                                 f"got seq_len={self.seq_len}")
        check_choice(name, "corpus", self.corpus, CORPUS_NAMES)
        if self.num_works < 2:
            raise ValueError(f"{name}.num_works must be >= 2, got {self.num_works}")
        check_fraction(name, self.train_fraction)

    @property
    def passage_bytes(self) -> int:
        """Bytes per passage: ``passage_len``, or ``(seq_len - 2) // 2`` when it is None."""
        return (self.seq_len - 2) // 2 if self.passage_len is None else self.passage_len


def works(cfg: RetrievalConfig) -> list[Work]:
    """The works pairs are drawn from; each split part must hold two passages."""
    owner = type(cfg).__name__
    out = longest_works(cfg.corpus, cfg.num_works, cfg.train_fraction, owner)
    check_room(owner, [[w] for w in out], 2 * cfg.passage_bytes, "two passages (2 * passage_len)")
    return out


def sample_pair(region_a: bytes, region_b: bytes | None, length: int,
                rng: np.random.Generator) -> tuple[bytes, bytes]:
    """Two ``length``-byte passages: one of each region, or (``region_b`` None) two
    non-overlapping ones of ``region_a``, in random order."""
    if region_b is not None:
        a = int(rng.integers(0, len(region_a) - length + 1))
        b = int(rng.integers(0, len(region_b) - length + 1))
        return region_a[a:a + length], region_b[b:b + length]
    lo, hi = sorted(int(x) for x in rng.integers(0, len(region_a) - 2 * length + 1, size=2))
    first, second = region_a[lo:lo + length], region_a[hi + length:hi + 2 * length]
    return (first, second) if rng.random() < 0.5 else (second, first)


def _examples(cfg: RetrievalConfig, pool: list[Work], n: int, split: str,
              rng: np.random.Generator) -> Batch:
    P = cfg.passage_bytes
    inputs = np.empty((n, cfg.seq_len), dtype=np.int64)  # [N, T] = [N, 2P + 2]
    inputs[:, P], inputs[:, -1] = SEP, QUERY
    targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
    for i, label in enumerate(balanced_labels(n, 2, rng)):
        if label == SAME:
            k = int(rng.integers(0, len(pool)))
            a, b = sample_pair(pool[k].region(split), None, P, rng)
        else:
            j, k = (int(x) for x in rng.choice(len(pool), size=2, replace=False))
            a, b = sample_pair(pool[j].region(split), pool[k].region(split), P, rng)
        inputs[i, :P] = np.frombuffer(a, dtype=np.uint8)
        inputs[i, P + 1:-1] = np.frombuffer(b, dtype=np.uint8)
        targets[i, -1] = CLASS0 + label
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets))


def make_retrieval(cfg: RetrievalConfig, seed: int = 0) -> TaskData:
    """Deterministic train/test pairs for ``seed``: inputs and targets ``[N, seq_len]`` int64,
    ``vocab_size = 260``; test pairs come from the held-out end of every work."""
    pool = works(cfg)
    train = _examples(cfg, pool, cfg.num_train, "train", np.random.default_rng([seed, 0]))
    test = _examples(cfg, pool, cfg.num_test, "test", np.random.default_rng([seed, 1]))
    return TaskData(train=train, test=test, vocab_size=VOCAB, seq_len=cfg.seq_len)

"""Byte-level text classification: Long Range Arena's "Text" task (Tay et al. 2021, §3.2: IMDb
reviews as bytes, 1K-4K long, binary sentiment), rebuilt from a corpus that ships inside a package
(``longctx.tasks.corpus``): a passage of ``seq_len - 1`` bytes is classified by its source.

- ``labels = "work"`` (default): which of the ``num_classes`` longest works of ``corpus`` the
  passage comes from (10 of the 38 Shakespeare plays by default: Hamlet, Richard III, Coriolanus,
  ...). Speaker names, places and vocabulary tell the plays apart, but only a model that reads
  the passage's words (not its byte statistics alone) gets far above chance.
- ``labels = "corpus"``: Shakespeare (0) vs the King James Bible (1), every work of both (``corpus``
  and ``num_classes`` are not used). Easy: line breaks and ``NAME:`` speaker tags alone separate
  them, so it is a sanity check, not a benchmark.

Train and test passages never share text: each work is split by position, its first
``train_fraction`` of bytes feeding training passages and the rest test passages, so every class
appears in both splits. Classes are balanced (their counts differ by at most one) and shuffled; a
passage starts at a uniformly random byte offset inside its region (it may cut a multi-byte
character: bytes are the tokens).

As a causal-LM task: ``<passage bytes> QUERY``, scored at the last position only, whose target is
the class token. Token ids: bytes 0..255, ``QUERY = 256``, class ``c`` -> ``CLASS0 + c = 257 + c``;
``vocab_size = 257 + classes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longctx.layers.common import check_choice
from longctx.ops.common import check_positive_int
from longctx.tasks.base import IGNORE_INDEX, Batch, TaskData

QUERY, CLASS0 = 256, 257  # the query token; class c is token CLASS0 + c
LABELS = ("work", "corpus")
CORPUS_NAMES = ("shakespeare", "kjv")  # longctx.tasks.corpus.CORPORA, without loading it


@dataclass
class TextClassificationConfig:
    seq_len: int = 1025  # 1,024 bytes + QUERY (LRA Text: 1K-4K bytes, Tay et al. 2021 §3.2)
    labels: str = "work"  # "work": which of num_classes works; "corpus": shakespeare vs kjv (easy)
    corpus: str = "shakespeare"  # labels="work": the shipped corpus whose works are the classes
    num_classes: int = 10  # labels="work": the num_classes longest works of the corpus
    train_fraction: float = 0.8  # each work's first 80% of bytes for training passages, rest test
    num_train: int = 5000  # training passages (balanced over classes)
    num_test: int = 500  # held-out passages (from the held-out end of every work)

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("seq_len", "num_classes", "num_train", "num_test"):
            check_positive_int(f"{name}.{f}", getattr(self, f))
        if self.seq_len < 2:
            raise ValueError(f"{name}.seq_len must be >= 2 (a passage and the query), "
                             f"got {self.seq_len}")
        check_choice(name, "labels", self.labels, LABELS)
        check_choice(name, "corpus", self.corpus, CORPUS_NAMES)
        if self.num_classes < 2:
            raise ValueError(f"{name}.num_classes must be >= 2, got {self.num_classes}")
        check_fraction(name, self.train_fraction)

    @property
    def passage_len(self) -> int:
        return self.seq_len - 1

    @property
    def n_classes(self) -> int:
        return 2 if self.labels == "corpus" else self.num_classes


def check_fraction(owner: str, value: object) -> float:
    """``train_fraction`` must be a number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{owner}.train_fraction must be in (0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Work:
    """One work's UTF-8 bytes, split by position: ``train = data[:cut]``, ``test = data[cut:]``."""

    title: str
    train: bytes
    test: bytes

    def region(self, split: str) -> bytes:
        return self.train if split == "train" else self.test


def split_work(title: str, text: str, train_fraction: float) -> Work:
    data = text.encode("utf-8")
    cut = int(len(data) * train_fraction)
    return Work(title, data[:cut], data[cut:])


def longest_works(corpus: str, n: int, train_fraction: float, owner: str = "task") -> list[Work]:
    """The ``n`` longest works (in bytes) of ``corpus``, longest first (ties: corpus order)."""
    from longctx.tasks.corpus import documents

    docs = documents(corpus)
    if n > len(docs):
        raise ValueError(f"{owner}: corpus {corpus!r} has {len(docs)} works, fewer than the "
                         f"{n} asked for")
    docs = sorted(docs, key=lambda d: -len(d.text.encode("utf-8")))[:n]
    return [split_work(d.title, d.text, train_fraction) for d in docs]


def check_room(owner: str, groups: list[list[Work]], need: int, what: str) -> None:
    """Each group (a class's works) must have a work whose train part, and one whose test part,
    holds ``need`` bytes; else the error names the longest such part and what it falls short of."""
    for works in groups:
        for split in ("train", "test"):
            best = max(works, key=lambda w: len(w.region(split)))
            if len(best.region(split)) < need:
                raise ValueError(f"{owner}: the {split} part of {best.title!r} has "
                                 f"{len(best.region(split))} bytes, fewer than {what} ({need}); "
                                 "lower seq_len or the number of works, or change train_fraction")


def sample_passage(works: list[Work], split: str, length: int,
                   rng: np.random.Generator) -> tuple[int, bytes]:
    """A ``length``-byte passage of one of ``works`` (uniform over all the split's passages):
    ``(index of its work, bytes)``."""
    room = np.array([max(len(w.region(split)) - length + 1, 0) for w in works], dtype=np.float64)
    k = int(rng.choice(len(works), p=room / room.sum())) if len(works) > 1 else 0
    start = int(rng.integers(0, room[k]))
    return k, works[k].region(split)[start:start + length]


def balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` labels, each class ``n // n_classes`` or one more times, in random order."""
    return rng.permutation(np.arange(n) % n_classes)


def classes(cfg: TextClassificationConfig) -> list[list[Work]]:
    """The works of each class (one work per class for ``labels="work"``)."""
    owner = type(cfg).__name__
    if cfg.labels == "work":
        out = [[w] for w in longest_works(cfg.corpus, cfg.num_classes, cfg.train_fraction, owner)]
    else:
        from longctx.tasks.corpus import documents

        out = [[split_work(d.title, d.text, cfg.train_fraction) for d in documents(c)]
               for c in CORPUS_NAMES]
    check_room(owner, out, cfg.passage_len, "a passage (seq_len - 1)")
    return out


def class_names(cfg: TextClassificationConfig) -> list[str]:
    """Label ``c``'s name: the work's title, or the corpus' name for ``labels="corpus"``."""
    if cfg.labels == "corpus":
        return list(CORPUS_NAMES)
    return [ws[0].title for ws in classes(cfg)]


def _examples(cfg: TextClassificationConfig, by_class: list[list[Work]], n: int, split: str,
              rng: np.random.Generator) -> Batch:
    inputs = np.full((n, cfg.seq_len), QUERY, dtype=np.int64)  # [N, T]; the last column stays QUERY
    targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
    labels = balanced_labels(n, cfg.n_classes, rng)
    for i, c in enumerate(labels):
        _, passage = sample_passage(by_class[c], split, cfg.passage_len, rng)
        inputs[i, :-1] = np.frombuffer(passage, dtype=np.uint8)
        targets[i, -1] = CLASS0 + c
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets))


def make_text_classification(cfg: TextClassificationConfig, seed: int = 0) -> TaskData:
    """Deterministic train/test sets for ``seed``: inputs and targets ``[N, seq_len]`` int64,
    ``vocab_size = 257 + classes``; test passages come from the held-out end of every work."""
    by_class = classes(cfg)
    train = _examples(cfg, by_class, cfg.num_train, "train", np.random.default_rng([seed, 0]))
    test = _examples(cfg, by_class, cfg.num_test, "test", np.random.default_rng([seed, 1]))
    return TaskData(train=train, test=test, vocab_size=CLASS0 + cfg.n_classes, seq_len=cfg.seq_len)

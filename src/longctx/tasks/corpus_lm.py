"""Byte-level language modelling on a shipped corpus: the arena's perplexity task.

Every example is a window of ``seq_len + 1`` consecutive bytes of the corpus; the model reads
the first ``seq_len`` and predicts each next byte (every position is scored). Training windows
come from the corpus' training documents, test windows from its held-out test documents
(``corpus.HELD_OUT``), so the test text is never trained on. The run's ``loss`` is the mean
cross-entropy in nats per byte: perplexity per byte = exp(loss), bits per byte = loss / ln 2.

With the suite's ``[extrapolation]`` table (multiples of the trained length) this is the
perplexity-vs-context-length experiment of the length-extrapolation papers (Press et al. 2022,
ALiBi, Fig. 1; Chen et al. 2023, position interpolation, Table 1), at byte level.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from longctx.ops.common import check_positive_int
from longctx.tasks.base import Batch, TaskData
from longctx.tasks.corpus import CORPORA, load_text

VOCAB = 256


@dataclass
class CorpusLMConfig:
    seq_len: int = 256  # bytes read per example (each predicts the next byte)
    corpus: str = "shakespeare"  # a shipped corpus, see longctx.tasks.corpus.CORPORA
    num_train: int = 4000  # training windows
    num_test: int = 64  # held-out windows (test documents)

    def __post_init__(self) -> None:
        for name in ("seq_len", "num_train", "num_test"):
            check_positive_int(f"CorpusLMConfig.{name}", getattr(self, name))
        if not isinstance(self.corpus, str) or self.corpus not in CORPORA:
            raise ValueError(f"CorpusLMConfig.corpus must be one of {', '.join(CORPORA)}, "
                             f"got {self.corpus!r}")


@cache
def _bytes(corpus: str, split: str) -> np.ndarray:
    return np.frombuffer(load_text(corpus, split).encode("utf-8"), dtype=np.uint8)


def windows(data: np.ndarray, seq_len: int, n: int, rng: np.random.Generator) -> Batch:
    """``n`` random windows of ``data``: inputs ``[n, seq_len]``, targets the next bytes."""
    if len(data) < seq_len + 1:
        raise ValueError(f"seq_len={seq_len} is longer than the text ({len(data)} bytes)")
    starts = rng.integers(0, len(data) - seq_len, size=n)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    chunk = torch.from_numpy(data[idx].astype(np.int64))
    return Batch(chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous())


def make_corpus_lm(cfg: CorpusLMConfig, seed: int = 0) -> TaskData:
    """Deterministic training windows (training documents) and test windows (test documents)."""
    train = windows(_bytes(cfg.corpus, "train"), cfg.seq_len, cfg.num_train,
                    np.random.default_rng([seed, 0]))
    test = windows(_bytes(cfg.corpus, "test"), cfg.seq_len, cfg.num_test,
                   np.random.default_rng([seed, 1]))
    return TaskData(train=train, test=test, vocab_size=VOCAB, seq_len=cfg.seq_len)

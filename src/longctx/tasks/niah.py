"""Needle in a haystack: single key, multi-key (distractor needles), multi-value (RULER's
variants, Hsieh et al. 2024, §3.1), in natural text from a shipped corpus or in synthetic tokens.

Text variant (bytes, vocab 256): needles "One of the special magic numbers for {key} is:
{value}. " are inserted at sentence boundaries of a corpus excerpt (train split for training,
test split for evaluation); the example ends with "What are the special magic numbers for {key}?
Answer: {v1}, {v2}." and only the answer's bytes are scored.
Synthetic variant (token ids, ``vocab_size``): the haystack is random tokens, a needle is
``NEEDLE key value``, the query ``QUERY key`` is followed by the values, scored.

- ``single``: one needle; ``multikey``: plus ``num_distractors`` needles with other keys;
  ``multivalue``: ``num_values`` needles with the queried key, all their values are the answer
  (in order of appearance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longctx.layers.common import check_choice
from longctx.ops.common import check_positive_int
from longctx.tasks.base import IGNORE_INDEX, Batch, TaskData

KINDS = ("single", "multikey", "multivalue")
HAYSTACKS = ("corpus", "synthetic")
NEEDLE_TEXT = "One of the special magic numbers for {key} is: {value}. "
QUERY_TEXT = "\nWhat are the special magic numbers for {key}? Answer: "
ADJECTIVES = ("amber", "brave", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy",
              "jolly", "keen", "lucky", "misty", "noble", "odd", "proud", "quiet", "rapid",
              "silent", "tidy")
NOUNS = ("falcon", "river", "lantern", "meadow", "harbor", "violin", "comet", "garden", "anchor",
         "castle", "willow", "ember", "canyon", "pebble", "orchid", "beacon", "thistle", "glacier",
         "saddle", "compass")
NEEDLE, QUERY, FIRST_FREE = 1, 2, 3  # synthetic special tokens (0 = padding/unused)


@dataclass
class NIAHConfig:
    seq_len: int = 512  # tokens per example (bytes for the corpus haystack)
    kind: str = "single"  # "single", "multikey" (distractor needles) or "multivalue"
    haystack: str = "corpus"  # "corpus" (natural text, bytes) or "synthetic" (random tokens)
    corpus: str = "shakespeare"  # the shipped corpus of the text haystack
    vocab_size: int = 256  # synthetic haystack: tokens (keys, values and filler from [3, vocab))
    num_distractors: int = 3  # multikey: needles with other keys
    num_values: int = 3  # multivalue: needles with the queried key
    depth: float | None = None  # single: needle position as a fraction; None = random
    num_train: int = 4000  # training examples
    num_test: int = 256  # held-out examples

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("seq_len", "vocab_size", "num_distractors", "num_values", "num_train", "num_test"):
            check_positive_int(f"{name}.{f}", getattr(self, f))
        check_choice(name, "kind", self.kind, KINDS)
        check_choice(name, "haystack", self.haystack, HAYSTACKS)
        if self.depth is not None and not 0.0 <= float(self.depth) <= 1.0:
            raise ValueError(f"{name}.depth must be in [0, 1] or None (random), got {self.depth!r}")
        if self.haystack == "corpus" and self.vocab_size != 256:
            raise ValueError(f"{name}: the corpus haystack is bytes: vocab_size must be 256")
        if self.haystack == "synthetic" and self.vocab_size < FIRST_FREE + 8:
            raise ValueError(f"{name}.vocab_size={self.vocab_size} is too small (>= {FIRST_FREE + 8})")
        need = self.needles * 24 + 80 if self.haystack == "corpus" else 3 * self.needles + 2 + self.answers
        if self.seq_len < need:
            raise ValueError(f"{name}: seq_len={self.seq_len} is too short for {self.needles} needles "
                             f"(needs >= {need})")

    @property
    def needles(self) -> int:
        return {"single": 1, "multikey": 1 + self.num_distractors, "multivalue": self.num_values}[self.kind]

    @property
    def answers(self) -> int:
        return self.num_values if self.kind == "multivalue" else 1


def _plan(cfg: NIAHConfig, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Which key each needle has (index 0 = the queried key) and the order they appear in."""
    keys = [0] * cfg.needles if cfg.kind == "multivalue" else list(range(cfg.needles))
    order = list(rng.permutation(cfg.needles))
    return [keys[i] for i in order], order


def _text_example(cfg: NIAHConfig, text: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    words = rng.choice(len(ADJECTIVES) * len(NOUNS), size=cfg.needles, replace=False)
    names = [f"{ADJECTIVES[w // len(NOUNS)]}-{NOUNS[w % len(NOUNS)]}" for w in words]
    values = [str(v) for v in rng.integers(100000, 1000000, size=cfg.needles)]
    keys, _ = _plan(cfg, rng)
    needles = [NEEDLE_TEXT.format(key=names[k], value=values[i]) for i, k in enumerate(keys)]
    answer = ", ".join(values[i] for i, k in enumerate(keys) if k == 0) + "."
    tail = QUERY_TEXT.format(key=names[0]) + answer
    room = cfg.seq_len + 1 - len(tail) - sum(len(n) for n in needles)
    start = int(rng.integers(0, len(text) - room - 1))
    hay = text[start:start + room]
    cuts = sorted(int(c) for c in (rng.random(cfg.needles) * room if cfg.depth is None or cfg.kind != "single"
                                   else [cfg.depth * room]))
    cuts = [hay.rfind(". ", 0, c) + 2 if hay.rfind(". ", 0, c) >= 0 else c for c in cuts]
    parts, prev = [], 0
    for c, needle in zip(cuts, needles):
        parts += [hay[prev:c], needle]
        prev = c
    full = "".join(parts) + hay[prev:] + tail
    ids = np.frombuffer(full.encode("utf-8", errors="replace"), dtype=np.uint8).astype(np.int64)
    ids = ids[len(ids) - (cfg.seq_len + 1):]  # multi-byte characters: keep the end (the answer)
    return ids, len(answer.encode())


def _synthetic_example(cfg: NIAHConfig, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    V, n = cfg.vocab_size, cfg.needles
    half = FIRST_FREE + (V - FIRST_FREE) // 2
    key_ids = rng.choice(np.arange(FIRST_FREE, half), size=n, replace=False)
    values = rng.integers(half, V, size=n)
    keys, _ = _plan(cfg, rng)
    answer = [int(values[i]) for i, k in enumerate(keys) if k == 0]
    tail = [QUERY, int(key_ids[0]), *answer]
    room = cfg.seq_len + 1 - len(tail) - 3 * n
    hay = list(rng.integers(FIRST_FREE, V, size=room))
    cuts = sorted(int(c) for c in (rng.random(n) * room if cfg.depth is None or cfg.kind != "single"
                                   else [cfg.depth * room]))
    parts, prev = [], 0
    for c, (i, k) in zip(cuts, enumerate(keys)):
        parts += hay[prev:c] + [NEEDLE, int(key_ids[k]), int(values[i])]
        prev = c
    return np.array(parts + hay[prev:] + tail, dtype=np.int64), len(answer)


def _examples(cfg: NIAHConfig, n: int, rng: np.random.Generator, split: str) -> Batch:
    inputs = np.zeros((n, cfg.seq_len), dtype=np.int64)
    targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
    text = None
    if cfg.haystack == "corpus":
        from longctx.tasks.corpus import load_text

        text = load_text(cfg.corpus, split)
    for i in range(n):
        ids, n_ans = _text_example(cfg, text, rng) if text is not None else _synthetic_example(cfg, rng)
        inputs[i] = ids[:-1]
        targets[i, -n_ans:] = ids[-n_ans:]
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets))


def make_niah(cfg: NIAHConfig, seed: int = 0) -> TaskData:
    """Deterministic NIAH train/test sets; the text haystack of the test set is held-out text."""
    train = _examples(cfg, cfg.num_train, np.random.default_rng([seed, 0]), "train")
    test = _examples(cfg, cfg.num_test, np.random.default_rng([seed, 1]), "test")
    return TaskData(train=train, test=test, vocab_size=cfg.vocab_size, seq_len=cfg.seq_len)

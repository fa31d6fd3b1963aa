"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention", §4.2 and Appendix).

The published prompt, as UTF-8 bytes (the byte tokenizer: vocab 256):

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize them.
    I will quiz you about the important information there. The grass is green. The sky is blue.
    The sun is yellow. Here we go. There and back again. (repeated) The pass key is 68446.
    Remember it. 68446 is the pass key. The grass is green. ... (repeated) What is the pass key?
    The pass key is 68446

The model must produce the key's digits after the last "The pass key is " (loss and accuracy on
those positions only). ``depth`` places the key sentence at that fraction of the filler (0 = right
after the instruction, 1 = right before the question; ``None``: uniform at random per example);
the filler is cut so every example is exactly ``seq_len`` bytes. ``passkey_example`` gives one
prompt for a length x depth grid (the usual heat map).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longctx.ops.common import check_positive_int
from longctx.tasks.base import IGNORE_INDEX, Batch, TaskData

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
               "memorize them. I will quiz you about the important information there. ")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_SENTENCE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is "
VOCAB = 256  # bytes


@dataclass
class PasskeyConfig:
    seq_len: int = 512  # bytes per example (prompt + answer)
    digits: int = 5  # length of the pass key
    depth: float | None = None  # key position as a fraction of the filler; None = random
    num_train: int = 4000  # training examples
    num_test: int = 256  # held-out examples (a different seed stream)

    def __post_init__(self) -> None:
        for name in ("seq_len", "digits", "num_train", "num_test"):
            check_positive_int(f"PasskeyConfig.{name}", getattr(self, name))
        if self.depth is not None and not 0.0 <= float(self.depth) <= 1.0:
            raise ValueError(f"PasskeyConfig.depth must be in [0, 1] or None (random), got {self.depth!r}")
        need = minimum_length(self.digits)
        if self.seq_len < need:
            raise ValueError(f"PasskeyConfig: seq_len={self.seq_len} is too short for the prompt with "
                             f"a {self.digits}-digit key (needs >= {need} bytes)")


def minimum_length(digits: int) -> int:
    """Bytes of the prompt with no filler at all, answer included."""
    key = "0" * digits
    return len(INSTRUCTION) + len(KEY_SENTENCE.format(key=key)) + len(QUESTION) + digits


def _filler(n: int) -> str:
    """``n`` bytes of filler: whole sentences, then spaces (no sentence cut in half)."""
    text = (FILLER * (n // len(FILLER) + 1))[:n]
    end = text.rfind(". ") + 2 if ". " in text else 0
    return text[:end] + " " * (n - end)


def passkey_example(seq_len: int, key: str, depth: float) -> tuple[str, int]:
    """The prompt with ``key`` at ``depth``, exactly ``seq_len`` bytes with the answer; returns
    ``(text, answer_start)`` where the answer's digits are ``text[answer_start:]``."""
    fill = seq_len - minimum_length(len(key))
    if fill < 0:
        raise ValueError(f"passkey: seq_len={seq_len} is shorter than the prompt ({minimum_length(len(key))} bytes)")
    cut = round(depth * fill)  # filler bytes before the key sentence
    text = (INSTRUCTION + _filler(cut) + KEY_SENTENCE.format(key=key) + _filler(fill - cut)
            + QUESTION + key)
    return text, len(text) - len(key)


def _examples(cfg: PasskeyConfig, n: int, rng: np.random.Generator) -> tuple[Batch, np.ndarray]:
    inputs = np.zeros((n, cfg.seq_len), dtype=np.int64)
    targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
    depths = rng.random(n) if cfg.depth is None else np.full(n, float(cfg.depth))
    for i in range(n):
        key = "".join(str(d) for d in rng.integers(0, 10, cfg.digits))
        text, start = passkey_example(cfg.seq_len + 1, key, float(depths[i]))
        ids = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)
        inputs[i] = ids[:-1]
        targets[i, start - 1:] = ids[start:]  # position t predicts byte t + 1: the key's digits
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets)), depths


def make_passkey(cfg: PasskeyConfig, seed: int = 0) -> TaskData:
    """Deterministic passkey train/test sets for ``seed``."""
    train, _ = _examples(cfg, cfg.num_train, np.random.default_rng([seed, 0]))
    test, _ = _examples(cfg, cfg.num_test, np.random.default_rng([seed, 1]))
    return TaskData(train=train, test=test, vocab_size=VOCAB, seq_len=cfg.seq_len)


def passkey_grid(lengths: list[int], depths: list[float], n: int = 32, digits: int = 5,
                 seed: int = 0) -> dict[tuple[int, float], Batch]:
    """Test batches for each (length, depth) cell of the heat map."""
    out = {}
    for i, L in enumerate(lengths):
        for j, d in enumerate(depths):
            cfg = PasskeyConfig(seq_len=L, digits=digits, depth=d, num_train=1, num_test=n)
            out[(L, d)], _ = _examples(cfg, n, np.random.default_rng([seed, 2, i, j]))
    return out

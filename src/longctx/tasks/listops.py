"""ListOps (Nangia & Bowman 2018), with Long Range Arena's generator settings (Tay et al. 2021,
§3.1): nested MIN / MAX / MED / SM (sum modulo 10) over digits 0-9, at most 10 arguments per
operator, depth at most 10, each node below the depth limit an operator with probability 0.25
(else a digit), and only expressions of ``min_len`` .. ``max_len`` tokens kept (LRA: 500-2,000).
Our own generator; the 10-way answer is the expression's value.

As a causal-LM task: ``PAD ... PAD [MAX 2 9 [MIN 4 7 ] 0 ] =`` (left-padded to ``seq_len``),
scored at the last position, where the model predicts the value's digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longctx.ops.common import check_positive_int
from longctx.tasks.base import IGNORE_INDEX, Batch, TaskData

OPERATORS = ("MIN", "MAX", "MED", "SM")
PAD, DIGIT0, CLOSE, EQUALS = 0, 1, 15, 16  # digits d -> DIGIT0 + d; operators 11..14
OP_ID = {op: 11 + i for i, op in enumerate(OPERATORS)}
VOCAB = 17


@dataclass
class ListOpsConfig:
    seq_len: int = 2048  # tokens per example (left-padded)
    min_len: int = 500  # shortest expression kept (tokens, "=" excluded)
    max_len: int = 2000  # longest expression kept; <= seq_len - 1
    max_depth: int = 10  # nesting limit (LRA: 10)
    max_args: int = 10  # arguments per operator, 2 .. max_args (LRA: 10)
    op_prob: float = 0.25  # a node below the depth limit is an operator with this probability
    num_train: int = 2000  # training examples
    num_test: int = 256  # held-out examples

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("seq_len", "min_len", "max_len", "max_depth", "max_args", "num_train", "num_test"):
            check_positive_int(f"{name}.{f}", getattr(self, f))
        if not self.min_len <= self.max_len <= self.seq_len - 1:
            raise ValueError(f"{name}: need min_len <= max_len <= seq_len - 1, got min_len={self.min_len}, "
                             f"max_len={self.max_len}, seq_len={self.seq_len}")
        if self.max_args < 2:
            raise ValueError(f"{name}.max_args must be >= 2, got {self.max_args}")
        if not 0.0 < self.op_prob < 1.0:
            raise ValueError(f"{name}.op_prob must be in (0, 1), got {self.op_prob!r}")


def evaluate(op: str, args: list[int]) -> int:
    """The value of one operator node (MED: the lower median for an even count, as int(median))."""
    if op == "MIN":
        return min(args)
    if op == "MAX":
        return max(args)
    if op == "MED":
        return int(np.median(args))
    return sum(args) % 10


class _TooLong(Exception):
    pass


def _tree(cfg: ListOpsConfig, rng: np.random.Generator, depth: int, budget: list[int]) -> tuple[list[int], int]:
    """Tokens and value of a random subtree; ``budget`` counts tokens left (``_TooLong`` past it)."""
    if depth > 1 and (depth >= cfg.max_depth or rng.random() >= cfg.op_prob):
        d = int(rng.integers(0, 10))
        budget[0] -= 1
        return [DIGIT0 + d], d
    op = OPERATORS[int(rng.integers(0, len(OPERATORS)))]
    tokens, values = [OP_ID[op]], []
    budget[0] -= 2
    for _ in range(int(rng.integers(2, cfg.max_args + 1))):
        if budget[0] < 0:
            raise _TooLong
        t, v = _tree(cfg, rng, depth + 1, budget)
        tokens += t
        values.append(v)
    return tokens + [CLOSE], evaluate(op, values)


def expression(cfg: ListOpsConfig, rng: np.random.Generator, tries: int = 10_000) -> tuple[list[int], int]:
    """A random expression of ``min_len .. max_len`` tokens (rejection sampling) and its value."""
    for _ in range(tries):
        budget = [cfg.max_len]
        try:
            tokens, value = _tree(cfg, rng, 1, budget)
        except _TooLong:
            continue
        if cfg.min_len <= len(tokens) <= cfg.max_len:
            return tokens, value
    raise ValueError(f"ListOps: no expression of {cfg.min_len}..{cfg.max_len} tokens in {tries} tries; "
                     "widen the range or raise op_prob / max_args")


def to_text(tokens: list[int]) -> str:
    names = {v: f"[{k}" for k, v in OP_ID.items()} | {CLOSE: "]", EQUALS: "=", PAD: ""}
    return " ".join(names.get(t, str(t - DIGIT0)) for t in tokens if t != PAD)


def _examples(cfg: ListOpsConfig, n: int, rng: np.random.Generator) -> Batch:
    inputs = np.full((n, cfg.seq_len), PAD, dtype=np.int64)
    targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
    for i in range(n):
        tokens, value = expression(cfg, rng)
        seq = tokens + [EQUALS]
        inputs[i, cfg.seq_len - len(seq):] = seq
        targets[i, -1] = DIGIT0 + value
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets))


def make_listops(cfg: ListOpsConfig, seed: int = 0) -> TaskData:
    """Deterministic ListOps train/test sets for ``seed``."""
    train = _examples(cfg, cfg.num_train, np.random.default_rng([seed, 0]))
    test = _examples(cfg, cfg.num_test, np.random.default_rng([seed, 1]))
    return TaskData(train=train, test=test, vocab_size=VOCAB, seq_len=cfg.seq_len)

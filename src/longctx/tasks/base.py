"""What every task produces: token inputs and targets, with IGNORE_INDEX where no loss is taken."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100  # targets with this value carry no loss (PyTorch's cross-entropy default)


@dataclass
class Batch:
    inputs: Tensor  # [N, T] int64 token ids
    targets: Tensor  # [N, T] int64, IGNORE_INDEX where no prediction is scored

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def slice(self, idx: Tensor | slice) -> Batch:
        return Batch(self.inputs[idx], self.targets[idx])


@dataclass
class TaskData:
    train: Batch
    test: Batch
    vocab_size: int
    seq_len: int

    def __post_init__(self) -> None:
        for name, b in (("train", self.train), ("test", self.test)):
            if b.inputs.shape != b.targets.shape or b.inputs.dtype != torch.int64:
                raise ValueError(f"TaskData.{name}: inputs/targets must be int64 of one shape")

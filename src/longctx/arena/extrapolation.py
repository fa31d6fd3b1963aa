"""Length extrapolation: a model trained at length L, evaluated at m * L under each RoPE scaling.

The published experiment (Chen et al. 2023, position interpolation; bloc97 2023, NTK-aware;
Peng et al. 2023, YaRN; Press et al. 2022, ALiBi): unscaled RoPE collapses past the trained
length; the scalings extend it, with a short fine-tune at the longer length (the papers use
~1000 steps; we use ``finetune_steps``) or without one (NTK and dynamic NTK are meant to work
zero-shot). For each multiple m of ``lengths`` and each scaling of ``scalings`` the trained model
is evaluated on fresh data of length m * L with the scaling's factor set to m; with
``finetune_steps > 0`` a copy of the model is also fine-tuned at that length with the scaling on
and evaluated again. Models whose mixers use no RoPE (ALiBi, NoPE, linear mixers) are evaluated
once per length, as they are (``scaling = "none"``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from longctx.models.rope import rope_mixers, rope_scaling, set_rope_scaling
from longctx.tasks.base import TaskData
from longctx.train import TrainConfig, evaluate, train

SCALINGS = ("none", "linear", "ntk", "dynamic", "yarn", "llama3")


@dataclass
class ExtrapolationConfig:
    # multiples of seq_len; fractions (0.25, 0.5) evaluate shorter windows, as perplexity-vs-
    # length curves do (Press et al. 2022, Fig. 1: L/4 .. 8L)
    lengths: list[float] = field(default_factory=lambda: [1, 2, 4, 8])
    scalings: list[str] = field(default_factory=lambda: ["none", "linear", "ntk", "dynamic", "yarn"])
    finetune_steps: int = 0  # > 0: also fine-tune a copy at each longer length with the scaling on
    finetune_lr: float | None = None  # None: a tenth of the run's learning rate
    finetune_batch_size: int = 32  # sequences per fine-tuning step
    num_test: int = 256  # held-out examples per evaluation length

    def __post_init__(self) -> None:
        if not isinstance(self.lengths, list) or not self.lengths:
            raise ValueError(f"lengths must be a non-empty list of positive integers, got {self.lengths!r}")
        for m in self.lengths:
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
                raise ValueError(f"lengths must hold positive numbers (multiples of seq_len), got {m!r}")
        if len(set(self.lengths)) != len(self.lengths):
            raise ValueError(f"lengths lists a multiple twice: {self.lengths}")
        if not isinstance(self.scalings, list) or not self.scalings:
            raise ValueError(f"scalings must be a non-empty list, got {self.scalings!r}")
        for s in self.scalings:
            if s not in SCALINGS:
                raise ValueError(f"unknown scaling {s!r}; known: {', '.join(SCALINGS)}")
        for name in ("finetune_steps", "finetune_batch_size", "num_test"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "finetune_steps" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'finetune_steps' else 'positive'} "
                                 f"integer, got {v!r}")
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise ValueError(f"finetune_lr must be > 0, got {self.finetune_lr!r}")


def evaluate_lengths(model: nn.Module, make_data, cfg: ExtrapolationConfig, trained_len: int,
                     lr: float, seed: int, progress: bool = False) -> list[dict[str, Any]]:
    """One record per (length, scaling, fine-tuned or not): ``{"length", "factor", "scaling",
    "finetuned", "accuracy", "loss"}``. ``make_data(seq_len, num_train, num_test)`` returns the
    task's ``TaskData`` at that length (``num_train = 0``: no training set needed).

    ``model`` is left as it was (fine-tunes run on copies; the scaling is reset at the end).
    """
    device = next(model.parameters()).device
    has_rope = bool(rope_mixers(model))
    n_evals = sum(len(cfg.scalings) if has_rope and m > 1 else 1 for m in cfg.lengths)
    bar = tqdm(total=n_evals, desc="extrapolation", disable=not progress, leave=False,
               dynamic_ncols=True)
    records = []
    for m in cfg.lengths:
        length = eval_length(m, trained_len)
        n_train = cfg.finetune_steps * cfg.finetune_batch_size if m > 1 else 0
        data = make_data(length, max(n_train, 1), cfg.num_test)
        names = cfg.scalings if has_rope and m > 1 else ["none"]
        for name in names:
            scaling = rope_scaling(name, m, trained_len)
            set_rope_scaling(model, scaling)
            acc, loss = evaluate(model, data.test, batch_size=max(1, 8192 // length))
            records.append(_record(length, m, name, False, acc, loss))
            if cfg.finetune_steps and m > 1:
                records.append(_finetuned(model, data, scaling, cfg, length, m, name, lr, seed,
                                          device))
            bar.update()
    bar.close()
    set_rope_scaling(model, None)
    return records


def eval_length(m: float, trained_len: int) -> int:
    """The evaluation length of multiple ``m``: ``round(m * trained_len)``, at least 1 token."""
    return max(1, round(m * trained_len))


def _finetuned(model: nn.Module, data: TaskData, scaling: dict | None, cfg: ExtrapolationConfig,
               length: int, m: int, name: str, lr: float, seed: int, device) -> dict[str, Any]:
    tuned = copy.deepcopy(model)
    set_rope_scaling(tuned, scaling)
    tc = TrainConfig(steps=cfg.finetune_steps, batch_size=cfg.finetune_batch_size,
                     lr=cfg.finetune_lr or lr / 10, seed=seed, warmup_frac=0.1,
                     eval_batch_size=max(1, 8192 // length))
    result = train(tuned, data, tc, progress=False)
    del tuned
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return _record(length, m, name, True, result.accuracy, result.loss)


def _record(length: int, m: int, name: str, finetuned: bool, acc: float, loss: float) -> dict:
    return {"length": length, "factor": m, "scaling": name, "finetuned": finetuned,
            "accuracy": acc, "loss": loss}

"""AdamW with linear warmup and cosine decay, gradient clipping, held-out accuracy.

Accuracy counts the scored positions (targets != IGNORE_INDEX) whose argmax is the target, as
zoology does for MQAR. A model may return logits for only the last L < T positions (a sequence
classifier: L = 1); they are scored against ``targets[:, -L:]`` (``aligned_targets``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from longctx.ops.common import check_positive_int
from longctx.tasks.base import IGNORE_INDEX, Batch, TaskData


@dataclass
class TrainConfig:
    steps: int = 500  # optimizer steps
    batch_size: int = 64  # sequences per step
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not on norms, biases)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    warmup_frac: float = 0.1  # fraction of steps with linear warmup
    min_lr_frac: float = 0.1  # cosine decays to min_lr_frac * lr
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    eval_every: int = 0  # evaluate every n steps (0 = only at the end)
    target_accuracy: float | None = None  # stop early once held-out accuracy reaches this
    eval_batch_size: int = 256  # sequences per evaluation forward
    seed: int = 0  # model init and data order
    threads: int | None = None  # torch.set_num_threads (None = leave as is)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batch_size"):
            check_positive_int(f"TrainConfig.{name}", getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"TrainConfig.warmup_frac must be in [0, 1), got {self.warmup_frac!r}")


@dataclass
class TrainResult:
    accuracy: float  # held-out accuracy at scored positions
    loss: float  # held-out mean cross-entropy at scored positions
    train_loss: float  # mean training loss over the last 10% of steps
    steps: int  # optimizer steps taken (fewer than configured if target_accuracy was reached)
    train_time_s: float  # wall time of the optimizer steps (evaluation excluded)
    tokens_per_s: float  # training tokens per second
    history: list[dict] = field(default_factory=list)  # [{"step", "accuracy", "loss"}]


LOSS_READ_EVERY = 25  # steps between read-backs of the training loss for the progress bar


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``cfg.lr``, then cosine decay to ``min_lr_frac * lr`` at ``cfg.steps``."""
    warmup = int(cfg.warmup_frac * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * cos)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def aligned_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The targets ``logits [B, L, V]`` predict: all of ``targets [B, T]`` when L == T, else the
    last L positions; an earlier scored position (a task that is not scored at its end only)
    is an error rather than silently left out."""
    L, T = logits.shape[1], targets.shape[1]
    if L == T:
        return targets
    if L > T:
        raise ValueError(f"the model returns logits for {L} positions, the targets have {T}")
    if bool((targets[:, : T - L] != IGNORE_INDEX).any()):
        raise ValueError(f"the model returns logits for the last {L} of {T} positions, but the task "
                         "scores positions before those (a classifier needs a task scored at its "
                         "last position only, such as listops)")
    return targets[:, T - L :]


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``; to a GPU through pinned memory, without waiting for the GPU (a copy
    from pageable memory synchronises the stream, once per step)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: nn.Module, data: Batch, batch_size: int = 256) -> tuple[float, float]:
    """(accuracy, mean loss) over the scored positions of ``data``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # sums kept on the device: one read-back at the end, not three per batch
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(data), batch_size):
        x = _to_device(data.inputs[i : i + batch_size], device)
        y = _to_device(data.targets[i : i + batch_size], device)
        logits, _ = model(x)
        y = aligned_targets(logits, y)  # [B, L]
        mask = y != IGNORE_INDEX
        n = mask.sum()
        correct += ((logits.argmax(-1) == y) & mask).sum()
        loss_sum += torch.where(n > 0, _loss(logits, y).double() * n, 0.0)  # (a mean over none is NaN)
        total += n
    model.train(was_training)
    correct, total, loss_sum = int(correct), int(total), float(loss_sum)
    if total == 0:
        raise ValueError("evaluate: the data has no scored positions (all targets are IGNORE_INDEX)")
    return correct / total, loss_sum / total


def train(model: nn.Module, data: TaskData, cfg: TrainConfig, progress: bool = True,
          desc: str = "train") -> TrainResult:
    """Train ``model`` on ``data.train`` and evaluate on ``data.test``.

    On a GPU the steps run ahead of the device: a training loss is read back every
    ``LOSS_READ_EVERY`` steps (progress bar) and at evaluations, and ``train_time_s`` is the wall
    time of the steps up to a synchronisation before each evaluation."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    n_train = len(data.train)
    order = torch.randperm(n_train, generator=gen)
    cursor, train_time, tokens = 0, 0.0, 0
    losses: list[torch.Tensor] = []  # on the device
    history: list[dict] = []
    model.train()
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    step = 0
    t0 = time.perf_counter()
    for step in bar:
        if cursor + cfg.batch_size > n_train:  # new epoch, new order
            order, cursor = torch.randperm(n_train, generator=gen), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        batch = data.train.slice(idx)
        x, y = _to_device(batch.inputs, device), _to_device(batch.targets, device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        logits, _ = model(x)
        loss = _loss(logits, aligned_targets(logits, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        tokens += x.numel()
        losses.append(loss.detach())
        if progress and (step + 1) % LOSS_READ_EVERY == 0:
            bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            _sync(device)
            train_time += time.perf_counter() - t0
            acc, ev_loss = evaluate(model, data.test, cfg.eval_batch_size)
            history.append({"step": step + 1, "accuracy": acc, "loss": ev_loss})
            bar.set_postfix(loss=f"{float(losses[-1]):.3f}", acc=f"{acc:.3f}")
            t0 = time.perf_counter()
            if cfg.target_accuracy is not None and acc >= cfg.target_accuracy:
                break
    else:
        _sync(device)
        train_time += time.perf_counter() - t0
    bar.close()
    acc, ev_loss = evaluate(model, data.test, cfg.eval_batch_size)
    history.append({"step": step + 1, "accuracy": acc, "loss": ev_loss})
    tail = torch.stack(losses[-max(1, len(losses) // 10):]).double().mean().item() if losses else math.nan
    return TrainResult(
        accuracy=acc, loss=ev_loss, train_loss=tail, steps=step + 1,
        train_time_s=train_time, tokens_per_s=tokens / max(train_time, 1e-9), history=history,
    )

"""Train a byte-level language model on a shipped corpus (``longctx train-lm``).

Random windows of ``seq_len`` bytes of the corpus' train split; next-byte cross-entropy; AdamW
with the warmup + cosine schedule of ``train/loop.py``. With ``sink_token`` every window starts
with the SINK token (StreamingLLM §3.3: pre-training with a dedicated attention sink). A
checkpoint (model, optimizer, step, sampler state) is written atomically every
``checkpoint_every`` steps; rerunning with the same output directory resumes from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from longctx.models.io import save_lm
from longctx.models.lm import LMConfig, LongCtxLM
from longctx.ops.common import check_positive_int
from longctx.tasks.corpus import check_corpus, load_text
from longctx.tasks.tokenizer import ByteTokenizer
from longctx.train.loop import TrainConfig, _param_groups, lr_at


@dataclass
class LMTrainConfig:
    corpus: str = "shakespeare"  # a shipped corpus (longctx.tasks.corpus.CORPORA)
    seq_len: int = 256  # tokens per training window (the SINK token included)
    steps: int = 2000  # optimizer steps
    batch_size: int = 32  # windows per step
    lr: float = 1e-3  # peak learning rate
    warmup_frac: float = 0.05  # linear warmup fraction
    min_lr_frac: float = 0.1  # cosine decays to this fraction of lr
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    eval_every: int = 500  # validation every n steps (and at the end)
    eval_batches: int = 8  # validation batches of batch_size windows
    checkpoint_every: int = 200  # resumable checkpoint every n steps
    seed: int = 0  # initialisation and window sampling
    sink_token: bool = False  # prepend the SINK token to every window (StreamingLLM §3.3)
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_corpus(self.corpus)
        for name in ("seq_len", "steps", "batch_size", "eval_every", "eval_batches", "checkpoint_every"):
            check_positive_int(f"LMTrainConfig.{name}", getattr(self, name))
        if self.seq_len < 2:
            raise ValueError(f"LMTrainConfig.seq_len must be >= 2, got {self.seq_len}")
        if not self.lr > 0:
            raise ValueError(f"LMTrainConfig.lr must be > 0, got {self.lr!r}")

    def schedule(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                           warmup_frac=self.warmup_frac, min_lr_frac=self.min_lr_frac,
                           weight_decay=self.weight_decay)


def corpus_bytes(corpus: str, split: str) -> torch.Tensor:
    return ByteTokenizer().encode(load_text(corpus, split))


def windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int, sink: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``[N, seq_len]`` for windows starting at ``starts``.

    Without a sink: bytes ``s .. s+L-1`` predict ``s+1 .. s+L``. With one: ``SINK, s .. s+L-2``
    predict ``s .. s+L-1`` (the sink position predicts the window's first byte).
    """
    n = seq_len - 1 if sink else seq_len
    idx = starts[:, None] + torch.arange(n + 1)
    chunk = data[idx]  # [N, n + 1]
    if not sink:
        return chunk[:, :-1], chunk[:, 1:]
    sink_col = torch.full((len(starts), 1), ByteTokenizer(True).sink_id, dtype=torch.int64)
    return torch.cat([sink_col, chunk[:, :-1]], dim=1), chunk


@torch.no_grad()
def evaluate_lm(model: LongCtxLM, data: torch.Tensor, cfg: LMTrainConfig) -> float:
    """Mean next-byte loss (nats) over fixed, evenly spaced windows of ``data``."""
    model.eval()
    n = cfg.eval_batches * cfg.batch_size
    starts = torch.linspace(0, len(data) - cfg.seq_len - 2, n).long()
    total = 0.0
    for i in range(0, n, cfg.batch_size):
        x, y = windows(data, starts[i:i + cfg.batch_size], cfg.seq_len, cfg.sink_token)
        logits, _ = model(x.to(cfg.device))
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), y.to(cfg.device).flatten())) * len(x)
    model.train()
    return total / n


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _resume(path: Path, cfg: LMTrainConfig, lm_config: LMConfig) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: the training checkpoint cannot be read ({e}); remove it to start over") from None
    ours = {"train": asdict(cfg), "lm": lm_config.to_dict()}
    theirs = {"train": state.get("train_config"), "lm": state.get("lm_config")}
    for part in ("train", "lm"):
        a, b = dict(ours[part] or {}), dict(theirs[part] or {})
        a.pop("device", None), b.pop("device", None)
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ValueError(f"{path.parent} holds a run with another configuration (differs in "
                             f"{diff}); use another --out directory, or remove it to start over")
    return state


def train_lm(lm_config: LMConfig, cfg: LMTrainConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train (or resume) and save the model with ``save_lm`` into ``out_dir``; returns the summary."""
    tok = ByteTokenizer(cfg.sink_token)
    if lm_config.vocab_size != tok.vocab_size:
        raise ValueError(f"train_lm: vocab_size must be {tok.vocab_size} for the byte tokenizer "
                         f"(sink_token={cfg.sink_token}), got {lm_config.vocab_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "train_state.pt"
    train_data, val_data = corpus_bytes(cfg.corpus, "train"), corpus_bytes(cfg.corpus, "val")
    torch.manual_seed(cfg.seed)
    model = LongCtxLM(lm_config).to(cfg.device).train()
    sched = cfg.schedule()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=sched.betas,
                            fused=cfg.device.startswith("cuda"))
    sampler = torch.Generator().manual_seed(cfg.seed)
    step, history, seconds = 0, [], 0.0
    resumed = _resume(ckpt, cfg, lm_config)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optimizer"])
        sampler.set_state(resumed["sampler"])
        step, history, seconds = resumed["step"], resumed["history"], resumed["seconds"]
    n_tok = cfg.seq_len - 1 if cfg.sink_token else cfg.seq_len

    def checkpoint() -> None:
        _save_state(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                           "sampler": sampler.get_state(), "history": history, "seconds": seconds,
                           "train_config": asdict(cfg), "lm_config": lm_config.to_dict()})

    bar = tqdm(total=cfg.steps, initial=step, desc=f"train-lm {cfg.corpus}", disable=not progress)
    loss_ema = None
    while step < cfg.steps:
        t0 = time.perf_counter()
        starts = torch.randint(0, len(train_data) - n_tok - 1, (cfg.batch_size,), generator=sampler)
        x, y = windows(train_data, starts, cfg.seq_len, cfg.sink_token)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, sched)
        logits, _ = model(x.to(cfg.device))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.to(cfg.device).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), sched.grad_clip)
        opt.step()
        step += 1
        seconds += time.perf_counter() - t0
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            history.append({"step": step, "train_loss": loss_ema, "val_loss": evaluate_lm(model, val_data, cfg)})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
    bar.close()
    val = history[-1]["val_loss"] if history else evaluate_lm(model, val_data, cfg)
    summary = {"val_loss": val, "val_bits_per_byte": val / math.log(2), "steps": step,
               "train_seconds": seconds, "tokens_per_s": step * cfg.batch_size * cfg.seq_len / max(seconds, 1e-9),
               "history": history}
    meta = {"tokenizer": tok.to_dict(), "corpus": cfg.corpus, "seq_len": cfg.seq_len,
            "sink_token": cfg.sink_token, "train_config": asdict(cfg), **summary}
    save_lm(model, out, meta)
    return summary


def lm_config_for(mixer: str, d_model: int, n_layers: int, n_heads: int, sink_token: bool,
                  mixer_options: dict | None = None, **extra) -> LMConfig:
    """The LM config of a byte-level model (vocab 256, or 257 with the sink token)."""
    options = {mixer: dict(mixer_options)} if mixer_options else {}
    return dataclasses.replace(LMConfig(vocab_size=ByteTokenizer(sink_token).vocab_size, d_model=d_model,
                                        n_layers=n_layers, n_heads=n_heads, mixer=mixer,
                                        mixer_options=options), **extra)

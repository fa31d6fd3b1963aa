"""Tests of ``longctx.generate``; the small float64 models they share are built here."""

from __future__ import annotations

import dataclasses

import torch

from longctx.layers import config_class
from longctx.models import LMConfig, LongCtxLM

VOCAB = 48
SMALL_CHUNK = 4  # small chunks and windows, so short sequences cross their boundaries


def small_options(name: str) -> dict:
    fields = {f.name for f in dataclasses.fields(config_class(name))}
    opts = {"chunk_size": SMALL_CHUNK} if "chunk_size" in fields else {}
    if "window" in fields:
        opts["window"] = 4
    return opts


def make_lm(mixer: str | list[str], short_conv: int = 0, *, n_layers: int = 2, d_model: int = 32,
            vocab: int = VOCAB, seed: int = 0, scale: float = 0.3) -> LongCtxLM:
    """A float64 LM with large random weights (so argmax decoding is not degenerate)."""
    used = [mixer] if isinstance(mixer, str) else mixer
    cfg = LMConfig(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=2, mixer=mixer,
                   mixer_options={m: small_options(m) for m in used if small_options(m)},
                   short_conv=short_conv)
    torch.manual_seed(seed)
    model = LongCtxLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5 if "embed" in name else scale)
        for block in model.blocks:
            if block.conv is not None:
                block.conv.weight.normal_(0.0, 0.5)
    return model.double().eval()


def perturbed_copy(model: LongCtxLM, noise: float, seed: int = 1) -> LongCtxLM:
    """The same architecture with Gaussian noise on every weight: a draft that agrees often."""
    draft = make_lm(model.config.mixer, model.config.short_conv, n_layers=model.config.n_layers,
                    d_model=model.config.d_model, vocab=model.config.vocab_size)
    draft.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return draft


def prompt(t: int = 5, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (1, t), generator=torch.Generator().manual_seed(seed))

"""Token distributions and the speculative-sampling acceptance rule.

The target distribution is the one ``LongCtxLM.generate`` samples from: ``softmax(logits / T)``
restricted to the ``top_k`` largest logits; ``T == 0`` is greedy (argmax). Draft tokens are
accepted with probability ``min(1, p(x) / q(x))`` and a rejection resamples from
``norm(max(0, p - q))`` (Leviathan et al. 2023, Alg. 1; Chen et al. 2023, Alg. 2), which makes
the output exactly ``p``-distributed whatever the draft ``q``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Sampler:
    """Temperature / top-k transform shared by draft and target, and the random draws."""

    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None  # keep the k largest logits (None = all)
    generator: torch.Generator | None = None  # every random draw comes from here

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def probs(self, logits: Tensor) -> Tensor:
        """``logits [..., V]`` -> float64 probabilities ``[..., V]`` (as ``LongCtxLM.generate``)."""
        logits = logits.double()
        if self.greedy:
            return logits.softmax(-1)  # only its ordering is used
        logits = logits / self.temperature
        if self.top_k is not None:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits.softmax(-1)

    def draw(self, probs: Tensor) -> Tensor:
        """One token per row of ``probs [k, V]`` -> ``[k]`` (argmax when greedy)."""
        if self.greedy:
            return probs.argmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]

    def first_tokens(self, probs: Tensor, k: int) -> Tensor:
        """``k`` first draft tokens from ``probs [V]``: the top k when greedy (distinct branches),
        else k independent draws (the i.i.d. drafts multi-candidate sampling needs)."""
        if self.greedy:
            return torch.topk(probs, k).indices
        return torch.multinomial(probs, k, replacement=True, generator=self.generator)

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def accept(self, p: Tensor, q: Tensor, x: int) -> bool:
        """Accept draft token ``x ~ q`` with probability ``min(1, p(x) / q(x))``."""
        return self.uniform() * float(q[x]) < float(p[x])


def residual(p: Tensor, q: Tensor) -> Tensor:
    """``norm(max(0, p - q))``: what is left of ``p`` after rejecting a draw from ``q``
    (Leviathan et al. 2023, Alg. 1). Falls back to ``p`` if nothing is left (``p == q``)."""
    r = (p - q).clamp_min(0.0)
    total = r.sum()
    return r / total if total > 0 else p

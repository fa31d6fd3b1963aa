"""Switching the RoPE scaling of a trained model's attention layers (position interpolation, NTK,
dynamic NTK, YaRN, llama3), for length extrapolation and streaming past the trained length."""

from __future__ import annotations

import dataclasses

from torch import nn

from longctx.layers.attention_base import AttentionMixer
from longctx.position import RotaryEmbedding

__all__ = ["rope_mixers", "rope_scaling", "set_rope_scaling"]


def rope_scaling(name: str, factor: float, trained_len: int) -> dict | None:
    """The ``rope_scaling`` dict of scaling ``name`` for evaluation at ``factor`` x the trained
    length (None = plain RoPE). Dynamic NTK takes factor 1: its scale comes from the current
    length alone (Emozilla 2023; transformers' ``dynamic`` with factor 1)."""
    if name == "none" or factor == 1:
        return None
    orig = {"original_max_position_embeddings": trained_len}
    return {
        "linear": {"rope_type": "linear", "factor": float(factor)},
        "ntk": {"rope_type": "ntk", "factor": float(factor)},
        "dynamic": {"rope_type": "dynamic", "factor": 1.0, **orig},
        "yarn": {"rope_type": "yarn", "factor": float(factor), **orig},
        "llama3": {"rope_type": "llama3", "factor": float(factor), "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, **orig},
    }[name]


def rope_mixers(model: nn.Module) -> list[AttentionMixer]:
    """The attention mixers of ``model`` that rotate q and k with RoPE."""
    return [m for m in model.modules() if isinstance(m, AttentionMixer) and m.rope is not None]


def set_rope_scaling(model: nn.Module, scaling: dict | None) -> None:
    """Replace the RoPE of every RoPE mixer of ``model`` by one with ``scaling`` (in place)."""
    for m in rope_mixers(model):
        c = m.config
        device = m.wq.weight.device
        m.rope = RotaryEmbedding(c.head_dim, c.rope_base, scaling).to(device)
        m.config = dataclasses.replace(c, rope_scaling=scaling)

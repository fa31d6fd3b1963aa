"""Linformer self-attention (Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity",
§4): keys and values are projected along the sequence axis to ``k`` rows by learned ``E``, ``F``
``[k, max_len]``, so attention costs O(T * k). Bidirectional only: ``E K`` mixes every position
of the sequence, so there is no causal form and no decode state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NoReturn

import torch
from torch import Tensor, nn

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import State
from longctx.layers.common import check_choice, check_positive, merge_heads
from longctx.ops.linformer_attention import chunk_linformer_attention

SHARING = ("none", "headwise", "kv")
WHY_NO_DECODE = ("Linformer projects keys and values along the whole sequence (E K sums over "
                 "every position), so it has no causal or token-by-token form")


@dataclass
class LinformerConfig(AttentionConfig):
    causal: bool = False  # Linformer is defined bidirectionally only
    max_len: int = 512  # longest sequence: E, F have max_len columns; T <= max_len
    k: int = 64  # projected length (the paper's k): rows of E K and F V
    # parameter sharing (paper §4): "none" (E_i, F_i per key/value head), "headwise" (one E and
    # one F for all heads), "kv" (key-value sharing: one E = F for all heads)
    sharing: str = "headwise"

    causal_modes: ClassVar[tuple[bool, ...]] = (False,)
    one_form_reason: ClassVar[str] = WHY_NO_DECODE

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "max_len", self.max_len)
        check_positive(name, "k", self.k)
        check_choice(name, "sharing", self.sharing, SHARING)


class Linformer(AttentionMixer):
    """q/k/v/o projections (GQA, RoPE or none) around ``chunk_linformer_attention``."""

    name = "linformer"
    state_class = State  # never instantiated: there is no decode state

    def __init__(self, config: LinformerConfig) -> None:
        super().__init__(config)
        c = config
        shape = (c.k, c.max_len) if c.sharing != "none" else (c.kv_heads, c.k, c.max_len)
        std = math.sqrt(2.0 / (c.k + c.max_len))  # Glorot-normal for a [k, max_len] map
        self.E = nn.Parameter(torch.randn(shape) * std)  # key projection [(Hk,) k, max_len]
        # value projection; key-value sharing ("kv") uses E for both
        self.F = nn.Parameter(torch.randn(shape) * std) if c.sharing != "kv" else None

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, None]:
        self.check_input(x)
        if state is not None:
            self.check_state(state, x.shape[0])  # raises: no decode state
        c = self.config
        T = x.shape[1]
        if T > c.max_len:
            raise ValueError(f"{self.name}: sequence length T={T} exceeds max_len={c.max_len}; "
                             "build the mixer with max_len >= the longest sequence")
        q, k, v = self.project(x, 0)  # [B, T, H, D], [B, T, Hk, D] x 2
        E = self.E.to(q.dtype)  # autocast: q may be lower precision than the parameters
        F = E if self.F is None else self.F.to(q.dtype)
        o, _ = chunk_linformer_attention(q, k, v, E, F, chunk_size=c.chunk_size)
        return self.wo(merge_heads(o)), None

    def init_state(self, batch_size: int, device=None, dtype=None) -> NoReturn:
        self.check_causal_for_state()

    def state_size(self, batch_size: int, seqlen: int,
                   dtype: torch.dtype = torch.float32) -> NoReturn:
        """No decode memory exists to measure: raises the same error as ``init_state``."""
        self.check_causal_for_state()

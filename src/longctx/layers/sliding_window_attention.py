"""Sliding-window attention (Beltagy et al. 2020; Mistral, Jiang et al. 2023).

Each token attends to the last ``window`` tokens, itself included. Decoding keeps a ring buffer
of ``window`` keys/values, so decode memory is constant in the sequence length. With
``causal=False`` (bidirectional, no decode state) a token attends to the tokens within distance
``window - 1`` on both sides (Longformer's symmetric window). Position: RoPE, ALiBi (Press et al.
2022, a per-head distance bias inside the op) or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import State, dtype_bytes
from longctx.layers.common import check_positive, merge_heads
from longctx.ops.sliding_window_attention import (
    chunk_sliding_window_attention,
    sliding_window_attention_step,
)


@dataclass
class SlidingWindowAttentionConfig(AttentionConfig):
    window: int = 64  # keys each query sees: t - window < j <= t (causal=False: |t - j| < window)

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)  # False: bidirectional, no decode
    position_modes: ClassVar[tuple[str, ...]] = ("rope", "alibi", "none")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, "window", self.window)


@dataclass
class WindowState(State):
    k: Tensor  # [B, window, Hk, D] ring buffer: position p in slot p % window (rotated keys)
    v: Tensor  # [B, window, Hk, D]
    n_seen: Tensor  # int64 0-dim: tokens seen so far (= absolute position of the next token)


class SlidingWindowAttention(AttentionMixer):
    name = "sliding_window_attention"
    state_class = WindowState

    def forward(self, x: Tensor, state: WindowState | None = None) -> tuple[Tensor, WindowState | None]:
        self.check_input(x)
        c = self.config
        if state is not None:
            self.check_state(state, x.shape[0])
        offset = 0 if state is None else int(state.n_seen)
        q, k, v = self.project(x, offset)  # [B, T, H, D], [B, T, Hk, D] x 2
        ring = None if state is None else (state.k, state.v, state.n_seen)
        if state is not None and x.shape[1] == 1:
            o, new = sliding_window_attention_step(q[:, 0], k[:, 0], v[:, 0], ring, window=c.window,
                                                   alibi_slopes=self.alibi_slopes)
            o = o.unsqueeze(1)
        else:
            o, new = chunk_sliding_window_attention(
                q, k, v, window=c.window, initial_state=ring,
                output_final_state=state is not None, chunk_size=c.chunk_size,
                alibi_slopes=self.alibi_slopes, causal=c.causal,
            )
        y = self.wo(merge_heads(o))
        return y, (None if state is None else WindowState(self.name, *new))

    def init_state(self, batch_size: int, device=None, dtype=None) -> WindowState:
        self.check_causal_for_state()
        c = self.config
        dtype = dtype or self.param_dtype()
        buf = torch.zeros(batch_size, c.window, c.kv_heads, c.head_dim, device=device, dtype=dtype)
        n_seen = torch.zeros((), dtype=torch.int64, device=device)
        return WindowState(self.name, buf, buf.clone(), n_seen)

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return 2 * batch_size * c.window * c.kv_heads * c.head_dim * dtype_bytes(dtype)

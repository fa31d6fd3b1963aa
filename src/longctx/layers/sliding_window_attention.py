"""Sliding-window causal attention (Beltagy et al. 2020; Mistral, Jiang et al. 2023).

Each token attends to the last ``window`` tokens, itself included. Decoding keeps a ring buffer
of ``window`` keys/values, so decode memory is constant in the sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import check_positive, merge_heads, split_heads
from longctx.ops.sliding_window_attention import (
    chunk_sliding_window_attention,
    sliding_window_attention_step,
)
from longctx.position import RotaryEmbedding


@dataclass
class SlidingWindowAttentionConfig(MixerConfig):
    window: int = 64  # keys each query sees: positions t - window < j <= t
    n_kv_heads: int | None = None  # key/value heads for GQA; None = n_heads
    rope_base: float = 10000.0  # RoPE base theta
    chunk_size: int = 64  # query block size of the chunked form

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "window", self.window)
        check_positive(name, "chunk_size", self.chunk_size)
        if self.n_kv_heads is not None:
            check_positive(name, "n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads != 0:
                raise ValueError(f"{name}: n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


@dataclass
class WindowState(State):
    k: Tensor  # [B, window, Hk, D] ring buffer: position p in slot p % window (rotated keys)
    v: Tensor  # [B, window, Hk, D]
    n_seen: Tensor  # int64 0-dim: tokens seen so far (= absolute position of the next token)


class SlidingWindowAttention(Mixer):
    name = "sliding_window_attention"
    state_class = WindowState

    def __init__(self, config: SlidingWindowAttentionConfig) -> None:
        super().__init__(config)
        c = config
        self.wq = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.d_model, c.kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(c.d_model, c.kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)
        self.rope = RotaryEmbedding(c.head_dim, c.rope_base)

    def forward(self, x: Tensor, state: WindowState | None = None) -> tuple[Tensor, WindowState | None]:
        self.check_input(x)
        c = self.config
        q = split_heads(self.wq(x), c.n_heads)  # [B, T, H, D]
        k = split_heads(self.wk(x), c.kv_heads)  # [B, T, Hk, D]
        v = split_heads(self.wv(x), c.kv_heads)
        if state is not None:
            self.check_state(state, x.shape[0])
        offset = 0 if state is None else int(state.n_seen)
        q, k = self.rope(q, k, offset)
        ring = None if state is None else (state.k, state.v, state.n_seen)
        if state is not None and x.shape[1] == 1:
            o, new = sliding_window_attention_step(q[:, 0], k[:, 0], v[:, 0], ring, window=c.window)
            o = o.unsqueeze(1)
        else:
            o, new = chunk_sliding_window_attention(
                q, k, v, window=c.window, initial_state=ring,
                output_final_state=state is not None, chunk_size=c.chunk_size,
            )
        y = self.wo(merge_heads(o))
        return y, (None if state is None else WindowState(self.name, *new))

    def init_state(self, batch_size: int, device=None, dtype=None) -> WindowState:
        c = self.config
        dtype = dtype or self.param_dtype()
        buf = torch.zeros(batch_size, c.window, c.kv_heads, c.head_dim, device=device, dtype=dtype)
        n_seen = torch.zeros((), dtype=torch.int64, device=device)
        return WindowState(self.name, buf, buf.clone(), n_seen)

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return 2 * batch_size * c.window * c.kv_heads * c.head_dim * dtype_bytes(dtype)

"""Longformer attention (Beltagy et al. 2020, §3.1): sliding window plus global attention.

Every token attends to its window and to the global positions; a global token attends to every
token (causal: every earlier token) through its own projections ``Q_g, K_g, V_g``, initialised to
the values of ``Q_s, K_s, V_s`` as in the paper. Decoding keeps the window, the keys at the global
positions and the global-projection keys of positions ``0 .. max(global_positions)``: constant
memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import State, dtype_bytes
from longctx.layers.common import check_positive, merge_heads, split_heads
from longctx.ops.longformer_attention import (
    check_global_positions,
    chunk_longformer_attention,
    longformer_attention_step,
)


@dataclass
class LongformerAttentionConfig(AttentionConfig):
    # keys each query sees around it: t - window < j <= t (causal), |t - j| < window (bidirectional)
    window: int = 64
    global_positions: tuple[int, ...] = (0,)  # absolute token positions with global attention

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)  # False: the paper's encoder form

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "window", self.window)
        if isinstance(self.global_positions, list):  # lists from TOML become tuples
            self.global_positions = tuple(self.global_positions)
        self.global_positions = check_global_positions(name, self.global_positions)


@dataclass
class LongformerState(State):
    k: Tensor  # [B, window, Hk, D] ring buffer of local keys: position p in slot p % window
    v: Tensor  # [B, window, Hk, D]
    gk: Tensor  # [B, |G|, Hk, D] local keys at the global positions (sorted), once seen
    gv: Tensor  # [B, |G|, Hk, D]
    pk: Tensor  # [B, max(G) + 1, Hk, D] global-projection keys K_g of positions 0 .. max(G)
    pv: Tensor  # [B, max(G) + 1, Hk, D]
    n_seen: Tensor  # int64 0-dim: tokens seen so far (= absolute position of the next token)


class LongformerAttention(AttentionMixer):
    name = "longformer_attention"
    state_class = LongformerState

    def __init__(self, config: LongformerAttentionConfig) -> None:
        super().__init__(config)
        # §3.1: separate projections for global attention, initialised to match Q_s, K_s, V_s
        self.wq_g = copy.deepcopy(self.wq)
        self.wk_g = copy.deepcopy(self.wk)
        self.wv_g = copy.deepcopy(self.wv)

    def project_global(self, x: Tensor, offset: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``Q_g, K_g, V_g`` like ``project``: RoPE at positions ``offset .. offset + T - 1``."""
        c = self.config
        q = split_heads(self.wq_g(x), c.n_heads)  # [B, T, H, D]
        k = split_heads(self.wk_g(x), c.kv_heads)  # [B, T, Hk, D]
        v = split_heads(self.wv_g(x), c.kv_heads)
        if self.rope is not None:
            q, k = self.rope(q, k, offset)
        return q, k, v

    def forward(self, x: Tensor, state: LongformerState | None = None
                ) -> tuple[Tensor, LongformerState | None]:
        self.check_input(x)
        c = self.config
        if state is not None:
            self.check_state(state, x.shape[0])
        offset = 0 if state is None else int(state.n_seen)
        q, k, v = self.project(x, offset)  # [B, T, H, D], [B, T, Hk, D] x 2
        q_g, k_g, v_g = self.project_global(x, offset)
        old = None if state is None else (state.k, state.v, state.gk, state.gv, state.pk,
                                          state.pv, state.n_seen)
        if state is not None and x.shape[1] == 1:
            o, new = longformer_attention_step(q[:, 0], k[:, 0], v[:, 0], q_g[:, 0], k_g[:, 0],
                                               v_g[:, 0], old, c.window, c.global_positions)
            o = o.unsqueeze(1)
        else:
            o, new = chunk_longformer_attention(
                q, k, v, q_g, k_g, v_g, c.window, c.global_positions, causal=c.causal,
                initial_state=old, output_final_state=state is not None, chunk_size=c.chunk_size,
            )
        y = self.wo(merge_heads(o))
        return y, (None if state is None else LongformerState(self.name, *new))

    def _rows(self) -> int:
        c = self.config
        G = c.global_positions
        return c.window + len(G) + (max(G) + 1 if G else 0)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LongformerState:
        self.check_causal_for_state()
        c = self.config
        dtype = dtype or self.param_dtype()
        G = c.global_positions

        def zeros(rows: int) -> Tensor:
            return torch.zeros(batch_size, rows, c.kv_heads, c.head_dim, device=device, dtype=dtype)

        P1 = max(G) + 1 if G else 0
        return LongformerState(self.name, zeros(c.window), zeros(c.window), zeros(len(G)),
                               zeros(len(G)), zeros(P1), zeros(P1),
                               torch.zeros((), dtype=torch.int64, device=device))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return 2 * batch_size * self._rows() * c.kv_heads * c.head_dim * dtype_bytes(dtype)

"""Dilated attention (Ding et al. 2023, "LongNet", §2.2–2.3).

For each (segment length w, dilation rate r): the sequence is split into segments of w tokens,
each head keeps every r-th token of a segment (head h from offset h mod r) and attends inside it;
the (w, r) outputs are mixed with weights proportional to their softmax denominators. Decoding
keeps a ring buffer of the last ``max(segment_lengths)`` keys/values: constant memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import State, dtype_bytes
from longctx.layers.common import merge_heads
from longctx.ops.dilated_attention import (
    check_segments,
    chunk_dilated_attention,
    dilated_attention_step,
)


@dataclass
class DilatedAttentionConfig(AttentionConfig):
    # segment lengths w_i, paired with dilation_rates; LongNet uses 2048 .. 32768, scaled down
    # here to the arena's sequence lengths (hundreds to a few thousand tokens)
    segment_lengths: tuple[int, ...] = (64, 128, 256)
    dilation_rates: tuple[int, ...] = (1, 2, 4)  # r_i: keep every r_i-th token of a w_i segment

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)  # False: no mask inside a segment

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        for field in ("segment_lengths", "dilation_rates"):  # lists from TOML become tuples
            value = getattr(self, field)
            if isinstance(value, list):
                setattr(self, field, tuple(value))
        try:
            check_segments(self.segment_lengths, self.dilation_rates)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None


@dataclass
class DilatedState(State):
    k: Tensor  # [B, W, Hk, D] ring buffer, W = max(segment_lengths): position p in slot p % W
    v: Tensor  # [B, W, Hk, D]
    n_seen: Tensor  # int64 0-dim: tokens seen so far (= absolute position of the next token)


class DilatedAttention(AttentionMixer):
    name = "dilated_attention"
    state_class = DilatedState

    def forward(self, x: Tensor, state: DilatedState | None = None) -> tuple[Tensor, DilatedState | None]:
        self.check_input(x)
        c = self.config
        if state is not None:
            self.check_state(state, x.shape[0])
        offset = 0 if state is None else int(state.n_seen)
        q, k, v = self.project(x, offset)  # [B, T, H, D], [B, T, Hk, D] x 2
        ring = None if state is None else (state.k, state.v, state.n_seen)
        if state is not None and x.shape[1] == 1:
            o, new = dilated_attention_step(q[:, 0], k[:, 0], v[:, 0], ring, c.segment_lengths,
                                            c.dilation_rates)
            o = o.unsqueeze(1)
        else:
            o, new = chunk_dilated_attention(
                q, k, v, c.segment_lengths, c.dilation_rates, causal=c.causal,
                initial_state=ring, output_final_state=state is not None,
            )
        y = self.wo(merge_heads(o))
        return y, (None if state is None else DilatedState(self.name, *new))

    def init_state(self, batch_size: int, device=None, dtype=None) -> DilatedState:
        self.check_causal_for_state()
        c = self.config
        dtype = dtype or self.param_dtype()
        W = max(c.segment_lengths)
        buf = torch.zeros(batch_size, W, c.kv_heads, c.head_dim, device=device, dtype=dtype)
        return DilatedState(self.name, buf, buf.clone(), torch.zeros((), dtype=torch.int64, device=device))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return 2 * batch_size * max(c.segment_lengths) * c.kv_heads * c.head_dim * dtype_bytes(dtype)

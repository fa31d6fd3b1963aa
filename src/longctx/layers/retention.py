"""Multi-scale retention (RetNet, Sun et al. 2023, §2.2).

``S_t = gamma_h S_{t-1} + k_t v_t^T``, ``o_t = q_t S_t`` with fixed per-head decays
``gamma_h = 1 - 2^(-5-h)``; q and k carry the xPos-style rotation Theta (implemented as RoPE);
heads are group-normalised and gated by ``swish(X W_G)`` (RetNet eq. 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import check_positive, merge_heads, split_heads
from longctx.ops.retention import chunk_retention, retention_step
from longctx.position import RotaryEmbedding


@dataclass
class RetentionConfig(MixerConfig):
    rope_base: float = 10000.0  # base of the rotation Theta applied to q and k
    chunk_size: int = 64  # chunk length of the chunkwise retention form

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)  # False: decay gamma^|n-m|

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, "chunk_size", self.chunk_size)


@dataclass
class RetentionState(State):
    S: Tensor  # [B, H, Dk, Dv]
    n_seen: Tensor  # int64 0-dim: tokens seen (position of the next token, for Theta)


class Retention(Mixer):
    name = "retention"
    state_class = RetentionState

    def __init__(self, config: RetentionConfig) -> None:
        super().__init__(config)
        c = config
        self.wq = nn.Linear(c.d_model, c.d_model, bias=False)
        self.wk = nn.Linear(c.d_model, c.d_model, bias=False)
        self.wv = nn.Linear(c.d_model, c.d_model, bias=False)
        self.wg = nn.Linear(c.d_model, c.d_model, bias=False)
        self.wo = nn.Linear(c.d_model, c.d_model, bias=False)
        self.norm = nn.GroupNorm(c.n_heads, c.d_model, affine=False)  # RetNet eq. 8 GroupNorm
        self.rope = RotaryEmbedding(c.head_dim, c.rope_base)

    def forward(self, x: Tensor, state: RetentionState | None = None):
        self.check_input(x)
        c = self.config
        B, T, _ = x.shape
        q = split_heads(self.wq(x), c.n_heads)  # [B, T, H, D]
        k = split_heads(self.wk(x), c.n_heads)
        v = split_heads(self.wv(x), c.n_heads)
        if state is not None:
            self.check_state(state, B)
        offset = 0 if state is None else int(state.n_seen)
        q, k = self.rope(q, k, offset)
        if state is None:
            o, S = chunk_retention(q, k, v, chunk_size=c.chunk_size, causal=c.causal)
        elif T == 1:
            o, S = retention_step(q[:, 0], k[:, 0], v[:, 0], state.S)
            o = o.unsqueeze(1)
        else:
            o, S = chunk_retention(q, k, v, initial_state=state.S, output_final_state=True,
                                   chunk_size=c.chunk_size)
        o = self.norm(merge_heads(o).reshape(B * T, -1)).view(B, T, -1)
        y = self.wo(F.silu(self.wg(x)) * o)
        if state is None:
            return y, None
        return y, RetentionState(self.name, S, state.n_seen + T)

    def init_state(self, batch_size: int, device=None, dtype=None) -> RetentionState:
        self.check_causal_for_state()
        c = self.config
        dtype = dtype or self.param_dtype()
        S = torch.zeros(batch_size, c.n_heads, c.head_dim, c.head_dim, device=device, dtype=dtype)
        return RetentionState(self.name, S, torch.zeros((), dtype=torch.int64, device=device))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return batch_size * c.n_heads * c.head_dim * c.head_dim * dtype_bytes(dtype)

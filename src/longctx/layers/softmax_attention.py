"""Causal softmax attention with RoPE and GQA (Vaswani et al. 2017; Ainslie et al. 2023 for GQA).

Training uses torch's fused ``scaled_dot_product_attention`` (``backend="sdpa"``) or the
memory-efficient blocked form (``backend="chunk"``, Rabe & Staats 2021); decoding appends to a KV
cache. RoPE (Su et al. 2021) is applied to q and k at their absolute positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import State, dtype_bytes
from longctx.layers.common import check_choice, merge_heads
from longctx.ops.softmax_attention import (
    chunk_softmax_attention,
    sdpa_softmax_attention,
    softmax_attention_step,
)


@dataclass
class SoftmaxAttentionConfig(AttentionConfig):
    backend: str = "sdpa"  # "sdpa" (torch fused kernel) or "chunk" (memory-efficient, no T x T)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(type(self).__name__, "backend", self.backend, ("sdpa", "chunk"))


@dataclass
class KVState(State):
    k: Tensor  # [B, S, Hk, D] rotated keys of every past token
    v: Tensor  # [B, S, Hk, D]


class SoftmaxAttention(AttentionMixer):
    name = "softmax_attention"
    state_class = KVState

    def forward(self, x: Tensor, state: KVState | None = None) -> tuple[Tensor, KVState | None]:
        self.check_input(x)
        if state is None:
            q, k, v = self.project(x, 0)  # [B, T, H, D], [B, T, Hk, D] x 2
            o, _ = self._attend(q, k, v, None, False)
            return self.wo(merge_heads(o)), None
        self.check_state(state, x.shape[0])
        past = state.k.shape[1]
        q, k, v = self.project(x, past)
        cache = (state.k, state.v) if past > 0 else None
        if x.shape[1] == 1:
            o, (k_all, v_all) = softmax_attention_step(q[:, 0], k[:, 0], v[:, 0], cache)
            o = o.unsqueeze(1)
        else:
            o, (k_all, v_all) = self._attend(q, k, v, cache, True)
        return self.wo(merge_heads(o)), KVState(self.name, k_all, v_all)

    def _attend(self, q, k, v, cache, output_final_state):
        if self.config.backend == "sdpa":
            return sdpa_softmax_attention(q, k, v, initial_state=cache, output_final_state=output_final_state)
        return chunk_softmax_attention(q, k, v, initial_state=cache, output_final_state=output_final_state,
                                       chunk_size=self.config.chunk_size)

    def init_state(self, batch_size: int, device=None, dtype=None) -> KVState:
        c = self.config
        dtype = dtype or self.param_dtype()
        empty = torch.zeros(batch_size, 0, c.kv_heads, c.head_dim, device=device, dtype=dtype)
        return KVState(self.name, empty, empty.clone())

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return 2 * batch_size * seqlen * c.kv_heads * c.head_dim * dtype_bytes(dtype)

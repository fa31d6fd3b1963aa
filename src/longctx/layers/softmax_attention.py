"""Causal softmax attention with RoPE and GQA (Vaswani et al. 2017; Ainslie et al. 2023 for GQA).

Training uses torch's fused ``scaled_dot_product_attention`` (``backend="sdpa"``) or the
memory-efficient blocked form (``backend="chunk"``, Rabe & Staats 2021); decoding appends to a KV
cache. RoPE (Su et al. 2021) is applied to q and k at their absolute positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import check_choice, check_positive, merge_heads, split_heads
from longctx.ops.softmax_attention import (
    chunk_softmax_attention,
    sdpa_softmax_attention,
    softmax_attention_step,
)
from longctx.position import RotaryEmbedding


@dataclass
class SoftmaxAttentionConfig(MixerConfig):
    n_kv_heads: int | None = None  # key/value heads for GQA; None = n_heads (plain multi-head)
    rope_base: float = 10000.0  # RoPE base theta
    backend: str = "sdpa"  # "sdpa" (torch fused kernel) or "chunk" (memory-efficient, no T x T)
    chunk_size: int = 64  # block size of the "chunk" backend

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.n_kv_heads is not None:
            check_positive(name, "n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads != 0:
                raise ValueError(f"{name}: n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        check_choice(name, "backend", self.backend, ("sdpa", "chunk"))
        check_positive(name, "chunk_size", self.chunk_size)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


@dataclass
class KVState(State):
    k: Tensor  # [B, S, Hk, D] rotated keys of every past token
    v: Tensor  # [B, S, Hk, D]


class SoftmaxAttention(Mixer):
    name = "softmax_attention"
    state_class = KVState

    def __init__(self, config: SoftmaxAttentionConfig) -> None:
        super().__init__(config)
        c = config
        self.wq = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.d_model, c.kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(c.d_model, c.kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)
        self.rope = RotaryEmbedding(c.head_dim, c.rope_base)

    def forward(self, x: Tensor, state: KVState | None = None) -> tuple[Tensor, KVState | None]:
        self.check_input(x)
        c = self.config
        q = split_heads(self.wq(x), c.n_heads)  # [B, T, H, D]
        k = split_heads(self.wk(x), c.kv_heads)  # [B, T, Hk, D]
        v = split_heads(self.wv(x), c.kv_heads)
        if state is None:
            q, k = self.rope(q, k, 0)
            o, _ = self._attend(q, k, v, None, False)
            return self.wo(merge_heads(o)), None
        self.check_state(state, x.shape[0])
        past = state.k.shape[1]
        q, k = self.rope(q, k, past)
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

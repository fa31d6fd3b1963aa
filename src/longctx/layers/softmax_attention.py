"""Softmax attention with RoPE or ALiBi and GQA (Vaswani et al. 2017; Ainslie et al. 2023 for GQA).

Training uses torch's fused ``scaled_dot_product_attention`` (``backend="sdpa"``) or the
memory-efficient blocked form (``backend="chunk"``, Rabe & Staats 2021); decoding appends to a KV
cache. RoPE (Su et al. 2021) is applied to q and k at their absolute positions; ALiBi (Press et
al. 2022) is a per-head distance bias inside the op. ``causal=False`` is bidirectional (no state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import CacheState, State, dtype_bytes
from longctx.layers.common import check_choice, merge_heads
from longctx.layers.tree import check_parents, tree_attention_mask, tree_depths
from longctx.ops.common.checks import default_scale
from longctx.ops.softmax_attention import (
    chunk_softmax_attention,
    sdpa_softmax_attention,
    softmax_attention_step,
)
from longctx.ops.softmax_attention.bias import alibi_bias


@dataclass
class SoftmaxAttentionConfig(AttentionConfig):
    backend: str = "sdpa"  # "sdpa" (torch fused kernel) or "chunk" (memory-efficient, no T x T)

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)  # False: bidirectional, no decode
    position_modes: ClassVar[tuple[str, ...]] = ("rope", "alibi", "none")

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
        if isinstance(state, CacheState):  # a cache policy (longctx.cache) runs the attention
            return state.attend(self, x)
        self.check_state(state, x.shape[0])
        past = state.k.shape[1]
        q, k, v = self.project(x, past)
        cache = (state.k, state.v) if past > 0 else None
        if x.shape[1] == 1:
            o, (k_all, v_all) = softmax_attention_step(q[:, 0], k[:, 0], v[:, 0], cache,
                                                       alibi_slopes=self.alibi_slopes)
            o = o.unsqueeze(1)
        else:
            o, (k_all, v_all) = self._attend(q, k, v, cache, True)
        return self.wo(merge_heads(o)), KVState(self.name, k_all, v_all)

    def forward_states(self, x: Tensor, state: KVState) -> tuple[Tensor, list[KVState]]:
        """``forward`` with a state, plus the cache after each position (views, no copies)."""
        if isinstance(state, CacheState):
            raise ValueError(f"{self.name}: per-position states (speculative decoding) need the "  # noqa: TRY004
                             "plain KV cache; a cache policy's buffers are updated in place")
        y, new = self(x, state)
        S = state.k.shape[1]
        return y, [KVState(self.name, new.k[:, :S + t + 1], new.v[:, :S + t + 1])
                   for t in range(x.shape[1])]

    def forward_tree(self, x: Tensor, parents: Tensor, state: KVState) -> Tensor:
        """Tree nodes ``x [B, N, d]`` after the cached tokens -> ``[B, N, d]``; ``state`` unchanged.

        Node i attends to the whole cache and to its ancestors and itself (tree attention mask);
        its position (RoPE rotation, ALiBi distance) is ``S + depth(i)``, the position it has in
        its own chain (You et al. 2024, §4.2; SpecInfer, Miao et al. 2024, §4).
        """
        self.check_input(x)
        self.check_state(state, x.shape[0])
        N = check_parents(parents)
        if N != x.shape[1]:
            raise ValueError(f"{self.name}.forward_tree: parents has {N} nodes, x has {x.shape[1]}")
        if N == 0:
            return torch.zeros_like(x)
        S = state.k.shape[1]
        pos = S + tree_depths(parents).to(x.device)  # [N]: node i sits at position S + depth(i)
        # RoPE offset per node so that node i (index i) gets position S + depth(i)
        offset = pos - torch.arange(N, device=x.device)
        q, k, v = self.project(x, offset)  # [B, N, H, D], [B, N, Hk, D] x 2
        k_all = torch.cat([state.k, k], dim=1)  # [B, S + N, Hk, D]
        v_all = torch.cat([state.v, v], dim=1)
        past = torch.ones(N, S, dtype=torch.bool, device=x.device)
        mask = torch.cat([past, tree_attention_mask(parents).to(x.device)], dim=1)  # [N, S + N]
        if self.alibi_slopes is not None:  # float mask [H, N, S + N]: bias from the positions
            k_pos = torch.cat([torch.arange(S, device=x.device), pos])  # [S + N]
            bias = alibi_bias(self.alibi_slopes, pos[:, None] - k_pos[None, :], q.dtype)
            mask = bias.masked_fill(~mask, float("-inf"))
        group = self.config.n_heads // self.config.kv_heads
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k_all.transpose(1, 2).repeat_interleave(group, dim=1),
            v_all.transpose(1, 2).repeat_interleave(group, dim=1), attn_mask=mask,
            scale=default_scale(None, q.shape[-1]),
        )  # [B, H, N, D]
        return self.wo(merge_heads(o.transpose(1, 2)))

    def _attend(self, q, k, v, cache, output_final_state):
        c = self.config
        kw = {"initial_state": cache, "output_final_state": output_final_state,
              "alibi_slopes": self.alibi_slopes, "causal": c.causal}
        if c.backend == "sdpa":
            return sdpa_softmax_attention(q, k, v, **kw)
        return chunk_softmax_attention(q, k, v, chunk_size=c.chunk_size, **kw)

    def init_state(self, batch_size: int, device=None, dtype=None) -> KVState:
        self.check_causal_for_state()
        c = self.config
        dtype = dtype or self.param_dtype()
        empty = torch.zeros(batch_size, 0, c.kv_heads, c.head_dim, device=device, dtype=dtype)
        return KVState(self.name, empty, empty.clone())

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return 2 * batch_size * seqlen * c.kv_heads * c.head_dim * dtype_bytes(dtype)

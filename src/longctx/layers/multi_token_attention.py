"""Multi-Token Attention (Golovneva, Wang, Weston, Sukhbaatar 2025, arXiv:2504.00927).

Softmax attention whose logits are convolved over nearby queries and keys before the softmax
(key-query convolution, ``c_q x c_k`` per head) and whose attention weights are mixed within
groups of ``c_h`` heads after it (head mixing); each head's output is then RMS-normalised
("group normalization") and scaled by ``1 - lambda_init(depth)`` as in the Differential
Transformer (Ye et al. 2024). Kernels start as the identity, so a fresh layer with
``group_norm=False`` is plain softmax attention. Decoding keeps a KV cache plus the last
``c_q - 1`` queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import State, dtype_bytes
from longctx.layers.common import check_positive, merge_heads
from longctx.ops.multi_token_attention import (
    chunk_multi_token_attention,
    identity_head_kernel,
    identity_kq_kernel,
    multi_token_attention_step,
)


@dataclass
class MultiTokenAttentionConfig(AttentionConfig):
    query_kernel: int = 6  # c_q: the key-query convolution reads the current and c_q - 1 previous queries
    key_kernel: int = 11  # c_k: ... and c_k keys around each key (offsets -c_k//2 .. ceil(c_k/2) - 1)
    head_kernel: int = 2  # c_h: heads per head-mixing group (post-softmax); 1 = no head mixing
    group_norm: bool = True  # RMS-normalise each head's output over head_dim (shared weight)
    depth_scaling: bool = True  # with group_norm: multiply by 1 - lambda_init(layer_idx) (Diff Transformer)
    layer_idx: int = 0  # 0-based depth of this layer, for depth_scaling
    norm_eps: float = 1e-5  # epsilon of the group normalisation

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        for field in ("query_kernel", "key_kernel", "head_kernel"):
            check_positive(name, field, getattr(self, field))
        if self.n_heads % self.head_kernel != 0:
            raise ValueError(
                f"{name}: n_heads={self.n_heads} must be divisible by head_kernel={self.head_kernel} "
                "(heads are mixed in groups of head_kernel)"
            )
        if isinstance(self.layer_idx, bool) or not isinstance(self.layer_idx, int) or self.layer_idx < 0:
            raise ValueError(f"{name}.layer_idx must be a non-negative integer, got {self.layer_idx!r}")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise ValueError(f"{name}.norm_eps must be a positive number, got {self.norm_eps!r}")

    @property
    def depth_scale(self) -> float:
        """``1 - lambda_init`` with ``lambda_init = 0.8 - 0.6 exp(-0.3 * layer_idx)``."""
        return 1.0 - (0.8 - 0.6 * math.exp(-0.3 * self.layer_idx))


@dataclass
class MTAState(State):
    k: Tensor  # [B, S, Hk, D] rotated keys of every past token
    v: Tensor  # [B, S, Hk, D]
    q: Tensor  # [B, query_kernel - 1, H, D] rotated queries of the last positions (zeros before 0)


class MultiTokenAttention(AttentionMixer):
    name = "multi_token_attention"
    state_class = MTAState

    def __init__(self, config: MultiTokenAttentionConfig) -> None:
        super().__init__(config)
        c = config
        self.kq_kernel = nn.Parameter(identity_kq_kernel(c.n_heads, c.query_kernel, c.key_kernel))
        self.head_kernel = (
            nn.Parameter(identity_head_kernel(c.n_heads, c.head_kernel)) if c.head_kernel > 1 else None
        )
        self.norm_weight = nn.Parameter(torch.ones(c.head_dim)) if c.group_norm else None

    def forward(self, x: Tensor, state: MTAState | None = None) -> tuple[Tensor, MTAState | None]:
        self.check_input(x)
        c = self.config
        if state is None:
            q, k, v = self.project(x, 0)  # [B, T, H, D], [B, T, Hk, D] x 2
            o, _ = chunk_multi_token_attention(q, k, v, self.kq_kernel, self.head_kernel,
                                               causal=c.causal, chunk_size=c.chunk_size)
            return self.wo(merge_heads(self._normalise(o))), None
        self.check_state(state, x.shape[0])
        q, k, v = self.project(x, state.k.shape[1])
        cache = (state.k, state.v, state.q)
        if x.shape[1] == 1:
            o, new = multi_token_attention_step(q[:, 0], k[:, 0], v[:, 0], cache, self.kq_kernel,
                                                self.head_kernel)
            o = o.unsqueeze(1)
        else:
            o, new = chunk_multi_token_attention(q, k, v, self.kq_kernel, self.head_kernel,
                                                 initial_state=cache, output_final_state=True,
                                                 chunk_size=c.chunk_size)
        return self.wo(merge_heads(self._normalise(o))), MTAState(self.name, *new)

    def _normalise(self, o: Tensor) -> Tensor:
        """Per-head RMS normalisation of ``o [B, T, H, D]`` times the depth scale."""
        c = self.config
        if self.norm_weight is None:
            return o
        o = o * torch.rsqrt(o.pow(2).mean(dim=-1, keepdim=True) + c.norm_eps) * self.norm_weight
        return o * c.depth_scale if c.depth_scaling else o

    def init_state(self, batch_size: int, device=None, dtype=None) -> MTAState:
        self.check_causal_for_state()
        c = self.config
        dtype = dtype or self.param_dtype()
        empty = torch.zeros(batch_size, 0, c.kv_heads, c.head_dim, device=device, dtype=dtype)
        q = torch.zeros(batch_size, c.query_kernel - 1, c.n_heads, c.head_dim, device=device,
                        dtype=dtype)
        return MTAState(self.name, empty, empty.clone(), q)

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        kv = 2 * seqlen * c.kv_heads * c.head_dim
        return batch_size * (kv + (c.query_kernel - 1) * c.n_heads * c.head_dim) * dtype_bytes(dtype)

"""Softmax attention (Vaswani et al. 2017): naive reference, memory-efficient chunked form
(Rabe & Staats 2021 / FlashAttention-2 backward), SDPA fast path and KV-cache decode; optional
ALiBi bias (Press et al. 2022) and a bidirectional form (``causal=False``, no state).

State: a KV cache ``(k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv])``.
"""

from longctx.ops.softmax_attention.chunk import chunk_softmax_attention, sdpa_softmax_attention
from longctx.ops.softmax_attention.naive import naive_softmax_attention
from longctx.ops.softmax_attention.recurrent import (
    recurrent_softmax_attention,
    softmax_attention_step,
)

__all__ = [
    "chunk_softmax_attention",
    "naive_softmax_attention",
    "recurrent_softmax_attention",
    "sdpa_softmax_attention",
    "softmax_attention_step",
]

"""Sliding-window attention (Longformer / Mistral style local attention): naive band-mask
reference, chunked form with O(T * (w + chunk)) memory, and ring-buffer decode; optional ALiBi
bias and a bidirectional form (``causal=False``: keys with |i - j| < w, no state).

State: ``(k_buf [B, w, Hk, D], v_buf [B, w, Hk, Dv], n_seen int64 [])``; position p in slot p % w.
"""

from longctx.ops.sliding_window_attention.chunk import chunk_sliding_window_attention
from longctx.ops.sliding_window_attention.naive import naive_sliding_window_attention
from longctx.ops.sliding_window_attention.recurrent import (
    recurrent_sliding_window_attention,
    sliding_window_attention_step,
)

__all__ = [
    "chunk_sliding_window_attention",
    "naive_sliding_window_attention",
    "recurrent_sliding_window_attention",
    "sliding_window_attention_step",
]

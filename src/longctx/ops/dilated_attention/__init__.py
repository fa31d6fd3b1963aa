"""Dilated attention (Ding et al. 2023, "LongNet", §2.2–2.3): for each (segment length w, dilation
rate r), attention inside every segment restricted to every r-th row (head h from offset h mod r),
the (w, r) outputs mixed by their softmax denominators. Causal and bidirectional forms; naive
(masked T x T per pattern), segment form (gather / attend / scatter) and ring-buffer decode.

State (causal): ``(k_buf [B, W, Hk, D], v_buf [B, W, Hk, Dv], n_seen int64 [])``,
``W = max(segment_lengths)``; position p in slot p % W.
"""

from longctx.ops.dilated_attention.chunk import chunk_dilated_attention
from longctx.ops.dilated_attention.common import check_segments
from longctx.ops.dilated_attention.naive import naive_dilated_attention
from longctx.ops.dilated_attention.recurrent import (
    dilated_attention_step,
    recurrent_dilated_attention,
)

__all__ = [
    "check_segments",
    "chunk_dilated_attention",
    "dilated_attention_step",
    "naive_dilated_attention",
    "recurrent_dilated_attention",
]

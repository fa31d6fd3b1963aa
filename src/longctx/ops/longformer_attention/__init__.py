"""Longformer attention (Beltagy et al. 2020, §3.1): sliding window plus global attention on given
positions, with separate projections Q_g, K_g, V_g for the global rows. Causal and bidirectional
forms; naive (masked softmax), chunked (banded window + small dense global parts) and decode.

State (causal): ``(k_buf, v_buf, gk, gv, pk, pv, n_seen)``, see ``common.py``.
"""

from longctx.ops.longformer_attention.chunk import chunk_longformer_attention
from longctx.ops.longformer_attention.common import check_global_positions
from longctx.ops.longformer_attention.naive import naive_longformer_attention
from longctx.ops.longformer_attention.recurrent import (
    longformer_attention_step,
    recurrent_longformer_attention,
)

__all__ = [
    "check_global_positions",
    "chunk_longformer_attention",
    "longformer_attention_step",
    "naive_longformer_attention",
    "recurrent_longformer_attention",
]

"""Grouped linear attention (You et al., ICML 2024, arXiv 2406.07368), the causal mixed chunk
attention of FLASH (Hua et al. 2022, §3.2): squared-ReLU attention inside groups of G tokens plus
linear attention whose KV sums are accumulated per group. See README.md for the derivation.

State: the tuple ``(S [B, H, Dk, Dv], k_buf [B, G-1, H, Dk], v_buf [B, G-1, H, Dv], n [] int64)``.
"""

from longctx.ops.grouped_linear_attention.chunk import chunk_grouped_linear_attention
from longctx.ops.grouped_linear_attention.naive import naive_grouped_linear_attention
from longctx.ops.grouped_linear_attention.recurrent import (
    grouped_linear_attention_step,
    recurrent_grouped_linear_attention,
)
from longctx.ops.grouped_linear_attention.state import GroupedState, check_grouped_state

__all__ = [
    "GroupedState",
    "check_grouped_state",
    "chunk_grouped_linear_attention",
    "grouped_linear_attention_step",
    "naive_grouped_linear_attention",
    "recurrent_grouped_linear_attention",
]

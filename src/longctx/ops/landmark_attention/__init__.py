"""Landmark attention (Mohtashami & Jaggi 2023): a grouped softmax over blocks, each complete
block reached through its landmark key; naive definition, blocked form (no T x T matrix, custom
backward) and a decode step that retrieves the top-k blocks per head by landmark score.

State: ``(k_blocks [B, N, bs, Hk, D], v_blocks [B, N, bs, Hk, Dv], k_landmark [B, N, Hk, D],
k_tail [B, r, Hk, D], v_tail [B, r, Hk, Dv])``, S = N * bs + r tokens seen.
"""

from longctx.ops.landmark_attention.chunk import chunk_landmark_attention
from longctx.ops.landmark_attention.naive import naive_landmark_attention
from longctx.ops.landmark_attention.recurrent import (
    landmark_attention_step,
    recurrent_landmark_attention,
)
from longctx.ops.landmark_attention.state import LandmarkCache, empty_cache

__all__ = [
    "LandmarkCache",
    "chunk_landmark_attention",
    "empty_cache",
    "landmark_attention_step",
    "naive_landmark_attention",
    "recurrent_landmark_attention",
]

"""Retention (RetNet, Sun et al. 2023): linear attention with a fixed per-head decay gamma_h.

With ``log_decay`` it is any fixed-decay linear attention. State: ``S [B, H, Dk, Dv]``.
See README.md for the derivation.
"""

from longctx.ops.retention.chunk import chunk_retention
from longctx.ops.retention.decay import retnet_log_decay
from longctx.ops.retention.naive import naive_retention
from longctx.ops.retention.recurrent import recurrent_retention, retention_step

__all__ = [
    "chunk_retention",
    "naive_retention",
    "recurrent_retention",
    "retention_step",
    "retnet_log_decay",
]

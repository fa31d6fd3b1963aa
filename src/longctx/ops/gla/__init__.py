"""Gated Linear Attention (Yang et al. 2024): linear attention with a data-dependent,
per-key-dimension forget gate given in log space (g <= 0). State: ``S [B, H, Dk, Dv]``.
See README.md for the chunked derivation and its numerical stability.
"""

from longctx.ops.gla.chunk import chunk_gla
from longctx.ops.gla.naive import naive_gla
from longctx.ops.gla.recurrent import gla_step, recurrent_gla

__all__ = ["chunk_gla", "gla_step", "naive_gla", "recurrent_gla"]

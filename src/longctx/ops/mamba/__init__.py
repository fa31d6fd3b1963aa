"""Mamba-1 selective scan (Gu & Dao 2023): a diagonal linear recurrence per channel with an
input-dependent step dt, input matrix B and output matrix C. State: ``h [B, Dn, N]``.
See README.md for the chunked (doubling-scan) form and its numerical stability.
"""

from longctx.ops.mamba.chunk import chunk_selective_scan
from longctx.ops.mamba.naive import naive_selective_scan
from longctx.ops.mamba.recurrent import recurrent_selective_scan, selective_scan_step

__all__ = [
    "chunk_selective_scan",
    "naive_selective_scan",
    "recurrent_selective_scan",
    "selective_scan_step",
]

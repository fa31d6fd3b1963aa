"""Linformer attention (Wang et al. 2020): keys and values projected along the sequence axis to
``k`` rows by learned ``E``, ``F`` ``[k, max_len]``. Bidirectional only; no decode form, no state.
"""

from longctx.ops.linformer_attention.chunk import chunk_linformer_attention
from longctx.ops.linformer_attention.naive import naive_linformer_attention

__all__ = ["chunk_linformer_attention", "naive_linformer_attention"]

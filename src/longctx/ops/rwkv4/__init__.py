"""RWKV-4 WKV (Peng et al. 2023): per-channel exponentially decaying attention with a bonus for
the current token. ``k, v [B, T, C]``, ``w [C] > 0`` (decay), ``u [C]`` (bonus); state
``(a, b, p)`` of ``[B, C]`` tensors (the sums scaled by ``e^{-p}``, p the running max exponent)."""

from longctx.ops.rwkv4.chunk import chunk_wkv
from longctx.ops.rwkv4.naive import naive_wkv
from longctx.ops.rwkv4.recurrent import empty_state, recurrent_wkv, wkv_step

__all__ = ["chunk_wkv", "empty_state", "naive_wkv", "recurrent_wkv", "wkv_step"]

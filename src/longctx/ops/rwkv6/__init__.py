"""RWKV-6 / Finch WKV (Peng et al. 2024): multi-head linear attention with a matrix-valued
state, a data-dependent per-key-dimension decay ``w_t = exp(-exp(d_t))`` (passed as its log,
``w <= 0``) and a bonus ``u`` for the current token, which reads the state *before* its own
write. ``r, k [B, T, H, K]``, ``v [B, T, H, V]``, ``w [B, T, H, K]``, ``u [H, K]``; state
``S [B, H, K, V]``. See README.md for the chunked derivation.
"""

from longctx.ops.rwkv6.chunk import chunk_rwkv6
from longctx.ops.rwkv6.naive import naive_rwkv6
from longctx.ops.rwkv6.recurrent import recurrent_rwkv6, rwkv6_step

__all__ = ["chunk_rwkv6", "naive_rwkv6", "recurrent_rwkv6", "rwkv6_step"]

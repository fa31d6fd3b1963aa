"""Multi-Token Attention (Golovneva et al. 2025): softmax attention whose logits are convolved over
(query, key) before the softmax and whose weights are mixed across groups of heads after it.
Naive full-matrix reference, query-blocked form with O(chunk * T) memory (checkpointed blocks),
and KV-cache decode.

State: ``(k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv], q_cache [B, c_q - 1, H, D])``.
"""

from longctx.ops.multi_token_attention.chunk import chunk_multi_token_attention
from longctx.ops.multi_token_attention.kernels import identity_head_kernel, identity_kq_kernel
from longctx.ops.multi_token_attention.naive import naive_multi_token_attention
from longctx.ops.multi_token_attention.recurrent import (
    multi_token_attention_step,
    recurrent_multi_token_attention,
)

__all__ = [
    "chunk_multi_token_attention",
    "identity_head_kernel",
    "identity_kq_kernel",
    "multi_token_attention_step",
    "naive_multi_token_attention",
    "recurrent_multi_token_attention",
]

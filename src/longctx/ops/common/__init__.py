from longctx.ops.common.checks import (
    check_chunk_size,
    check_gate,
    check_positive_int,
    check_qkv,
    check_state,
    check_step_qkv,
    default_scale,
)
from longctx.ops.common.chunking import pad_to_multiple

__all__ = [
    "check_chunk_size",
    "check_gate",
    "check_positive_int",
    "check_qkv",
    "check_state",
    "check_step_qkv",
    "default_scale",
    "pad_to_multiple",
]

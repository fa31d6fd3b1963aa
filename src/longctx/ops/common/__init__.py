from longctx.ops.common.checks import (
    check_chunk_size,
    check_gate,
    check_positive_int,
    check_qkv,
    check_state,
    check_step_qkv,
    check_values,
    default_scale,
    trusted_values,
)
from longctx.ops.common.chunking import pad_to_multiple

__all__ = [
    "check_chunk_size",
    "check_gate",
    "check_positive_int",
    "check_qkv",
    "check_state",
    "check_step_qkv",
    "check_values",
    "default_scale",
    "pad_to_multiple",
    "trusted_values",
]

"""Positional encodings. RoPE scalings (linear, NTK, dynamic, YaRN, llama3) and ALiBi: issue 4."""

from longctx.position.alibi import alibi_slopes as alibi_slopes  # explicit re-export
from longctx.position.rope import (
    ROPE_TYPES,
    RotaryEmbedding,
    apply_rotary,
    check_rope_scaling,
    rope_frequencies,
    rope_inv_freq,
)

__all__ = ["ROPE_TYPES", "RotaryEmbedding", "apply_rotary", "check_rope_scaling", "rope_frequencies",
           "rope_inv_freq"]

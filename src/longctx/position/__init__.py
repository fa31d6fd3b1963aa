"""Positional encodings. RoPE scalings (linear, NTK, dynamic, YaRN, llama3) and ALiBi: issue 4."""

from longctx.position.rope import RotaryEmbedding, apply_rotary, rope_inv_freq

__all__ = ["RotaryEmbedding", "apply_rotary", "rope_inv_freq"]

"""What the softmax-attention family shares: GQA head counts, q/k/v/o projections and RoPE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig
from longctx.layers.common import check_choice, check_positive, split_heads
from longctx.position import RotaryEmbedding, check_rope_scaling
from longctx.position.alibi import alibi_slopes


@dataclass
class AttentionConfig(MixerConfig):
    n_kv_heads: int | None = None  # key/value heads for GQA (Ainslie et al. 2023); None = n_heads
    position: str = "rope"  # "rope" (RoPE, with rope_scaling), "alibi" (Press et al. 2022) or "none"
    rope_base: float = 10000.0  # RoPE base theta
    # transformers' rope parameters, e.g. {"rope_type": "yarn", "factor": 4.0,
    # "original_max_position_embeddings": 256}; None = plain RoPE (rope_type "default")
    rope_scaling: dict | None = None
    chunk_size: int = 64  # block size of the chunked (blocked) form

    # the ``position`` values this mixer accepts (ALiBi needs a bias inside the op)
    position_modes: ClassVar[tuple[str, ...]] = ("rope", "none")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "chunk_size", self.chunk_size)
        check_choice(name, "position", self.position, self.position_modes)
        if self.rope_scaling is not None and self.position != "rope":
            raise ValueError(f"{name}: rope_scaling is set but position={self.position!r}; "
                             "it applies to position='rope' only")
        if self.rope_scaling is not None:
            try:
                self.rope_scaling = check_rope_scaling(self.rope_scaling)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        if self.n_kv_heads is not None:
            check_positive(name, "n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads != 0:
                raise ValueError(f"{name}: n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


class AttentionMixer(Mixer):
    """Projections ``x -> q [B, T, H, D], k, v [B, T, Hk, D]`` with RoPE, and ``o -> y``."""

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__(config)
        c = config
        self.wq = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.d_model, c.kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(c.d_model, c.kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)
        # ALiBi (Press et al. 2022): fixed per-head slopes [H], given to the attention op; not saved
        slopes = alibi_slopes(c.n_heads) if c.position == "alibi" else None
        self.register_buffer("alibi_slopes", slopes, persistent=False)
        self.rope = RotaryEmbedding(c.head_dim, c.rope_base, c.rope_scaling) if c.position == "rope" else None

    def project(self, x: Tensor, offset: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k rotated for absolute positions ``offset .. offset + T - 1`` (RoPE), and v."""
        c = self.config
        q = split_heads(self.wq(x), c.n_heads)  # [B, T, H, D]
        k = split_heads(self.wk(x), c.kv_heads)  # [B, T, Hk, D]
        v = split_heads(self.wv(x), c.kv_heads)
        if self.rope is not None:
            q, k = self.rope(q, k, offset)
        return q, k, v

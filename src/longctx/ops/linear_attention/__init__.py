"""Linear attention (Katharopoulos et al. 2020) with the feature maps identity, elu+1, relu and
the Based 2nd-order Taylor map (Arora et al. 2024). See README.md for the derivation.

State: the tuple ``(S [B, H, F, Dv], z [B, H, F])``, ``F = feature_dim(feature_map, Dk)``.
"""

from longctx.ops.linear_attention.chunk import chunk_linear_attention
from longctx.ops.linear_attention.feature_maps import FEATURE_MAPS, feature_dim
from longctx.ops.linear_attention.naive import naive_linear_attention
from longctx.ops.linear_attention.recurrent import linear_attention_step, recurrent_linear_attention

__all__ = [
    "FEATURE_MAPS",
    "chunk_linear_attention",
    "feature_dim",
    "linear_attention_step",
    "naive_linear_attention",
    "recurrent_linear_attention",
]

"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025): the delta rule with a Mamba-2 style scalar
decay per head, ``S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, the decay
given in log space ``g = log(alpha) <= 0``. State: ``S [B, H, Dk, Dv]``. Keys must be unit-norm
(or pass ``use_qk_l2norm=True``) and ``beta`` in [0, 2]. See README.md.
"""

from longctx.ops.gated_deltanet.chunk import chunk_gated_delta_rule
from longctx.ops.gated_deltanet.naive import naive_gated_delta_rule
from longctx.ops.gated_deltanet.recurrent import gated_delta_rule_step, recurrent_gated_delta_rule

__all__ = [
    "chunk_gated_delta_rule",
    "gated_delta_rule_step",
    "naive_gated_delta_rule",
    "recurrent_gated_delta_rule",
]

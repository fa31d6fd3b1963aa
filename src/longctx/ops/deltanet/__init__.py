"""DeltaNet (Schlag et al. 2021; chunked form of Yang et al. 2024): linear attention whose state
is updated by the delta rule, ``S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``.
State: ``S [B, H, Dk, Dv]``. Keys must be unit-norm (or pass ``use_qk_l2norm=True``) and
``beta`` in [0, 2]. See README.md for the chunked (WY / UT-transform) derivation.
"""

from longctx.ops.deltanet.chunk import chunk_delta_rule
from longctx.ops.deltanet.naive import naive_delta_rule
from longctx.ops.deltanet.recurrent import delta_rule_step, recurrent_delta_rule

__all__ = ["chunk_delta_rule", "delta_rule_step", "naive_delta_rule", "recurrent_delta_rule"]

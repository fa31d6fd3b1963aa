"""Log-linear attention (Guo, Yang, Goel, Xing, Dao, Kim 2025, arXiv 2506.04761) over every linear
base: linear attention, gated (GLA / retention), Mamba-2 (SSD) and Gated DeltaNet.

The fixed-size state of the base is replaced by O(log T) Fenwick level states; the query at t reads
level l with the data-dependent weight lambda_t^(l). State: ``FenwickState(S, t)``,
``S [B, bit_length(t), H, Dk, Dv]`` (Mamba-2: ``[..., P, N]``). See README.md for the derivations.
"""

from longctx.ops.log_linear.chunk import (
    chunk_log_linear_attention,
    chunk_log_linear_gated_deltanet,
    chunk_log_linear_mamba2,
)
from longctx.ops.log_linear.fenwick import FenwickState, required_levels
from longctx.ops.log_linear.naive import (
    naive_log_linear_attention,
    naive_log_linear_gated_deltanet,
    naive_log_linear_mamba2,
)
from longctx.ops.log_linear.recurrent import (
    log_linear_attention_step,
    log_linear_gated_deltanet_step,
    log_linear_mamba2_step,
    recurrent_log_linear_attention,
    recurrent_log_linear_gated_deltanet,
    recurrent_log_linear_mamba2,
)

__all__ = [
    "FenwickState",
    "chunk_log_linear_attention",
    "chunk_log_linear_gated_deltanet",
    "chunk_log_linear_mamba2",
    "log_linear_attention_step",
    "log_linear_gated_deltanet_step",
    "log_linear_mamba2_step",
    "naive_log_linear_attention",
    "naive_log_linear_gated_deltanet",
    "naive_log_linear_mamba2",
    "recurrent_log_linear_attention",
    "recurrent_log_linear_gated_deltanet",
    "recurrent_log_linear_mamba2",
    "required_levels",
]

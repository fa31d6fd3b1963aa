"""SSD, the state space dual layer of Mamba-2 (Dao & Gu 2024): a selective SSM whose transition is a
scalar per head, ``H_t = exp(dt_t A_h) H_{t-1} + dt_t x_t B_t^T``, ``y_t = H_t C_t + D_h x_t``.
State: ``[B, H, P, N]``. See README.md for the chunked (SSD) derivation and the map onto gla.
"""

from longctx.ops.mamba2.chunk import chunk_ssd
from longctx.ops.mamba2.mapping import ssd_as_gla_inputs
from longctx.ops.mamba2.naive import naive_ssd
from longctx.ops.mamba2.recurrent import recurrent_ssd, ssd_step

__all__ = ["chunk_ssd", "naive_ssd", "recurrent_ssd", "ssd_as_gla_inputs", "ssd_step"]

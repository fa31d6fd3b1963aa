"""H3 (Fu, Dao, Saab, Thomas, Rudra & Ré 2023): ``O = Q * SSM_diag(SSM_shift(K) V^T)``, multi-head.
The diagonal SSM is S4D (``ops/s4``)."""

from longctx.ops.h3.chunk import H3State, chunk_h3
from longctx.ops.h3.naive import naive_h3
from longctx.ops.h3.recurrent import h3_step
from longctx.ops.h3.shift import shift_conv

__all__ = ["H3State", "chunk_h3", "h3_step", "naive_h3", "shift_conv"]

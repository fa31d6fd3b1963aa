"""S5: a MIMO diagonal SSM computed with a parallel associative scan (Smith et al. 2023).

Shapes: ``u [B, T, H]``; ``Lambda [P]``, ``B [P, H]``, ``C [H, P]`` complex; ``dt [P]``; ``D [H]``;
state ``[B, P]`` complex.
"""

from longctx.ops.s5.chunk import chunk_s5
from longctx.ops.s5.init import hippo_legs, hippo_n_eigenvalues
from longctx.ops.s5.naive import naive_s5
from longctx.ops.s5.recurrent import s5_step
from longctx.ops.s5.ssm import discretize

__all__ = ["chunk_s5", "discretize", "hippo_legs", "hippo_n_eigenvalues", "naive_s5", "s5_step"]

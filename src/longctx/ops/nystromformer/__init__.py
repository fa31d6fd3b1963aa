"""Nystromformer attention (Xiong et al. 2021): the Nystrom approximation of bidirectional softmax
attention with segment-mean landmarks and an iterative Moore-Penrose pseudo-inverse. Bidirectional
only; no decode form, no state.
"""

from longctx.ops.nystromformer.chunk import chunk_nystrom_attention
from longctx.ops.nystromformer.naive import naive_nystrom_attention
from longctx.ops.nystromformer.pinv import iterative_pinv, nystrom_pinv

__all__ = ["chunk_nystrom_attention", "iterative_pinv", "naive_nystrom_attention", "nystrom_pinv"]

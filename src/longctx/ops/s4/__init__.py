"""S4D: diagonal state-space model (Gu, Gupta, Goel & Ré 2022), ZOH or bilinear discretisation;
Vandermonde kernel + FFT convolution (training), the recurrence (decode), a bidirectional form.

Shapes: ``u [B, T, H]`` real; ``A, B, C [H, N]`` complex; ``dt, D [H]``; state ``[B, H, N]``
complex.
"""

from longctx.ops.s4.chunk import chunk_s4d
from longctx.ops.s4.init import s4d_inv, s4d_lin
from longctx.ops.s4.naive import naive_kernel, naive_s4d
from longctx.ops.s4.recurrent import s4d_step
from longctx.ops.s4.ssm import (
    anticausal_fft_conv,
    discretize,
    fft_conv,
    state_after,
    vandermonde_kernel,
)

__all__ = ["anticausal_fft_conv", "chunk_s4d", "discretize", "fft_conv", "naive_kernel", "naive_s4d",
           "s4d_inv", "s4d_lin", "s4d_step", "state_after", "vandermonde_kernel"]

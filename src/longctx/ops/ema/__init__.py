"""MEGA's multi-dimensional damped EMA (Ma et al. 2023): ``x [B, T, D]``, ``alpha, delta, beta,
eta [D, h]``, state ``[B, D, h]``; convolution (FFT) and recurrent forms, bidirectional option."""

from longctx.ops.ema.chunk import chunk_ema
from longctx.ops.ema.naive import naive_ema
from longctx.ops.ema.recurrent import ema_step

__all__ = ["chunk_ema", "ema_step", "naive_ema"]

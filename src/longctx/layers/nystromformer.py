"""Nystromformer self-attention (Xiong et al. 2021, "Nystromformer: A Nystrom-Based Algorithm
for Approximating Self-Attention", §3): softmax attention approximated through ``m`` segment-mean
landmarks and an iterative Moore-Penrose pseudo-inverse, plus a depthwise convolution skip
connection on the values. Bidirectional only: the landmarks average over the whole sequence, so
there is no causal form and no decode state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import State
from longctx.layers.common import check_positive, merge_heads
from longctx.ops.nystromformer import chunk_nystrom_attention
from longctx.ops.nystromformer.pinv import check_pinv_iterations

WHY_NO_DECODE = ("Nystromformer's landmarks are segment means over the whole sequence, so it has "
                 "no causal or token-by-token form")


@dataclass
class NystromformerConfig(AttentionConfig):
    causal: bool = False  # Nystromformer is defined bidirectionally only
    num_landmarks: int = 64  # m: segment-mean landmarks of Q and K
    pinv_iterations: int | None = 6  # steps of the iterative pinv (paper: 6); None = exact pinv
    conv_kernel: int = 33  # odd length of the depthwise conv skip on V along T; 0 = off

    causal_modes: ClassVar[tuple[bool, ...]] = (False,)
    one_form_reason: ClassVar[str] = WHY_NO_DECODE

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "num_landmarks", self.num_landmarks)
        try:
            check_pinv_iterations(self.pinv_iterations)
        except ValueError as e:
            raise ValueError(f"{name}.{e}") from None
        if (isinstance(self.conv_kernel, bool) or not isinstance(self.conv_kernel, int)
                or self.conv_kernel < 0 or (self.conv_kernel > 0 and self.conv_kernel % 2 == 0)):
            raise ValueError(f"{name}.conv_kernel must be 0 (off) or an odd positive integer (a "
                             f"centred kernel), got {self.conv_kernel!r}")


class Nystromformer(AttentionMixer):
    """q/k/v/o projections (GQA, RoPE or none) around ``chunk_nystrom_attention``, plus
    ``o_h += conv_h * v_h``: one length-``conv_kernel`` filter per query head along the sequence,
    shared by the head's channels as in the authors' release, zero-padded at both ends (a
    centred, non-causal filter)."""

    name = "nystromformer"
    state_class = State  # never instantiated: there is no decode state

    def __init__(self, config: NystromformerConfig) -> None:
        super().__init__(config)
        c = config
        self.conv_weight = None
        if c.conv_kernel > 0:
            bound = 1.0 / math.sqrt(c.conv_kernel)  # nn.Conv1d's default range for fan_in = kernel
            w = torch.empty(c.n_heads, c.conv_kernel).uniform_(-bound, bound)
            self.conv_weight = nn.Parameter(w)  # [H, conv_kernel] depthwise filter per head

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, None]:
        self.check_input(x)
        if state is not None:
            self.check_state(state, x.shape[0])  # raises: no decode state
        c = self.config
        q, k, v = self.project(x, 0)  # [B, T, H, D], [B, T, Hk, D] x 2
        o, _ = chunk_nystrom_attention(q, k, v, c.num_landmarks, pinv_iterations=c.pinv_iterations,
                                       chunk_size=c.chunk_size)
        if self.conv_weight is not None:
            o = o + self.conv_skip(v)
        return self.wo(merge_heads(o)), None

    def conv_skip(self, v: Tensor) -> Tensor:
        """``v [B, T, Hk, D]`` -> ``[B, T, H, D]``: ``sum_i conv[h, i] v[t + i - K // 2]`` (zero
        outside the sequence), query head h reading kv head ``h // (H // Hk)``."""
        B, T, Hk, D = v.shape
        H, K = self.conv_weight.shape
        v_h = v.repeat_interleave(H // Hk, dim=2)  # [B, T, H, D]
        chans = v_h.permute(0, 2, 3, 1).reshape(B, H * D, T)  # channel h * D + d
        w = self.conv_weight.repeat_interleave(D, dim=0)[:, None, :]  # [H * D, 1, K]
        out = F.conv1d(chans, w.to(v.dtype), padding=K // 2, groups=H * D)  # [B, H * D, T]
        return out.reshape(B, H, D, T).permute(0, 3, 1, 2)

    def init_state(self, batch_size: int, device=None, dtype=None) -> NoReturn:
        self.check_causal_for_state()

    def state_size(self, batch_size: int, seqlen: int,
                   dtype: torch.dtype = torch.float32) -> NoReturn:
        """No decode memory exists to measure: raises the same error as ``init_state``."""
        self.check_causal_for_state()

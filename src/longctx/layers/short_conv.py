"""Short causal depthwise convolution with a residual ("Canon-A" layer, Allen-Zhu 2025,
"Physics of Language Models: Part 4.1"; the same idea as H3's shift SSM and the short convs of
Mamba / Based / DeltaNet layers).

``y_t = x_t + sum_{i<K} w_i * x_{t-i}`` per channel. It lets every mixer see a few previous tokens
directly, which turns associative recall's "previous token" step into a one-layer job. Decode
keeps the last ``K - 1`` inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.base import State, dtype_bytes
from longctx.layers.tree import unfolded_causal_conv


@dataclass
class ConvState(State):
    buf: Tensor  # [B, K - 1, d_model] the last K - 1 inputs, oldest first


class ShortConv(nn.Module):
    name = "short_conv"

    def __init__(self, d_model: int, kernel_size: int) -> None:
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 2:
            raise ValueError(f"ShortConv: kernel_size must be an integer >= 2, got {kernel_size!r}")
        self.d_model, self.kernel_size = d_model, kernel_size
        self.weight = nn.Parameter(torch.zeros(d_model, 1, kernel_size))  # zero init: identity map

    def forward(self, x: Tensor, state: ConvState | None = None) -> tuple[Tensor, ConvState | None]:
        """``x [B, T, d]`` -> ``(y [B, T, d], state)``; with a state, continue the sequence."""
        B, _T, d = x.shape
        K = self.kernel_size
        past = x.new_zeros(B, K - 1, d) if state is None else state.buf
        if state is not None and (state.buf.shape != (B, K - 1, d)):
            raise ValueError(f"ShortConv: state buffer is {list(state.buf.shape)}, expected {[B, K - 1, d]}")
        xp = torch.cat([past, x], dim=1)  # [B, K - 1 + T, d]
        y = F.conv1d(xp.transpose(1, 2), self.weight, groups=d).transpose(1, 2)  # [B, T, d]
        new = None if state is None else ConvState(self.name, xp[:, -(K - 1):])
        return x + y, new

    def forward_states(self, x: Tensor, state: ConvState) -> tuple[Tensor, list[ConvState]]:
        """``forward`` with a state, plus the state after each position (views of one buffer)."""
        y, _ = self(x, state)
        xp = torch.cat([state.buf, x], dim=1)  # [B, K - 1 + T, d]
        K = self.kernel_size
        return y, [ConvState(self.name, xp[:, t + 1:t + K]) for t in range(x.shape[1])]

    def forward_tree(self, x: Tensor, parents: Tensor, state: ConvState | None = None) -> Tensor:
        """Tree nodes ``x [B, N, d]`` -> ``[B, N, d]``: each node's window runs over its own
        ancestors, not over the flattened tree (the unfolded conv, You et al. 2024, §4.2)."""
        past = None if state is None else state.buf
        return x + unfolded_causal_conv(x, self.weight, parents, past)

    def init_state(self, batch_size: int, device=None, dtype=None) -> ConvState:
        dtype = dtype or self.weight.dtype
        return ConvState(self.name, torch.zeros(batch_size, self.kernel_size - 1, self.d_model,
                                                device=device, dtype=dtype))

    def state_size(self, batch_size: int, dtype: torch.dtype = torch.float32) -> int:
        return batch_size * (self.kernel_size - 1) * self.d_model * dtype_bytes(dtype)

"""Rotary position embedding (Su et al. 2021, RoFormer eq. 34), in the rotate-half layout.

The rotate-half layout pairs dimension i with i + D/2, as Llama / HF transformers do, so
checkpoints and inverse frequencies line up with transformers' ``rope_type="default"``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rope_inv_freq(head_dim: int, base: float = 10000.0, device=None) -> Tensor:
    """theta_i = base^(-2i/D), i = 0 .. D/2-1 (RoFormer eq. 15). Shape ``[D/2]``, float32."""
    if head_dim % 2 != 0:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)).float()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, T, H, D]`` by angles given as ``cos, sin [T, D]``."""
    cos = cos[None, :, None, :].to(x.dtype)  # [1, T, 1, D]
    sin = sin[None, :, None, :].to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Computes cos/sin for absolute positions ``offset .. offset + T - 1`` on the fly."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, base), persistent=False)

    def cos_sin(self, seqlen: int, offset: int | Tensor = 0, device=None) -> tuple[Tensor, Tensor]:
        device = device or self.inv_freq.device
        pos = torch.arange(seqlen, device=device, dtype=torch.float32) + offset  # [T]
        angles = torch.outer(pos, self.inv_freq.to(device))  # [T, D/2]
        emb = torch.cat((angles, angles), dim=-1)  # [T, D]
        return emb.cos(), emb.sin()

    def forward(self, q: Tensor, k: Tensor, offset: int | Tensor = 0) -> tuple[Tensor, Tensor]:
        """Rotate ``q [B, T, H, D]`` and ``k [B, T, Hk, D]`` for positions starting at ``offset``."""
        cos, sin = self.cos_sin(q.shape[1], offset, q.device)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

"""Landmarks by segment means (Xiong et al. 2021, §3), with padding when m does not divide T."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longctx.ops.common.chunking import pad_to_multiple


def segment_length(T: int, num_landmarks: int) -> tuple[int, int]:
    """``(l, m_eff)``: segment length ``l = ceil(T / m)`` and the number of non-empty segments
    ``m_eff = ceil(T / l) <= m``. ``m >= T`` gives ``l = 1``, ``m_eff = T`` (one token each)."""
    seg = math.ceil(T / num_landmarks)
    return seg, math.ceil(T / seg)


def segment_means(x: Tensor, num_landmarks: int) -> Tensor:
    """``x [B, T, h, D]`` -> landmarks ``[B, m_eff, h, D]``: the mean of each segment of ``l``
    consecutive tokens.

    When ``m`` divides ``T`` these are the paper's segment-means (``l = T / m``). Otherwise the
    sequence is padded at the end to ``m_eff * l`` with masked tokens: a padded token counts in no
    mean (the last segment is the mean of its ``T - (m_eff - 1) l`` real tokens) and segments of
    padding only are dropped. README.md says why.
    """
    B, T, h, D = x.shape
    seg, m_eff = segment_length(T, num_landmarks)
    padded, _ = pad_to_multiple(x, seg, dim=1)  # [B, m_eff * l, h, D], zeros at the end
    sums = padded.reshape(B, m_eff, seg, h, D).sum(dim=2)  # [B, m_eff, h, D]
    counts = torch.full((m_eff,), float(seg), dtype=x.dtype, device=x.device)
    counts[-1] = T - (m_eff - 1) * seg  # real tokens in the last segment
    return sums / counts[None, :, None, None]

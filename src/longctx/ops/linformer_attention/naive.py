"""Linformer attention, the definition (Wang et al. 2020, "Linformer: Self-Attention with Linear
Complexity", §4): keys and values are projected along the sequence axis to ``k`` rows,
``K' = E K``, ``V' = F V``, and ``o = softmax(scale * Q K'^T) V'``. Bidirectional only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_qkv, default_scale
from longctx.ops.linformer_attention.checks import check_projections


def project(P: Tensor, x: Tensor) -> Tensor:
    """``P [k, T]`` or ``[Hk, k, T]`` times ``x [B, T, Hk, D]`` along T -> ``[B, k, Hk, D]``."""
    if P.dim() == 2:
        return torch.einsum("ct,bthd->bchd", P, x)
    return torch.einsum("hct,bthd->bchd", P, x)


def naive_linformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    E: Tensor,
    F: Tensor,
    scale: float | None = None,
) -> tuple[Tensor, None]:
    """Linformer attention: every query attends to ``k`` projected keys (no mask: bidirectional).

    q ``[B, T, H, D]``, k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]`` (GQA: query head h reads kv head
    ``h // (H // Hk)``). ``E``, ``F``: ``[k, max_len]`` (one pair shared by all heads; pass the
    same tensor twice for the paper's key-value sharing) or ``[Hk, k, max_len]`` (one pair per
    key/value head), with ``max_len >= T``; a sequence of length T uses their first T columns
    (equal to zero-padding it to max_len). Returns ``(o [B, T, H, Dv], None)``: there is no state.
    """
    op = "naive_linformer_attention"
    _, T, H, Hk, D, _ = check_qkv(op, q, k, v, allow_gqa=True)
    scale = default_scale(scale, D)
    E_T, F_T = check_projections(op, E, F, T, Hk, q)  # [(Hk,) k, T]

    k_proj = project(E_T, k)  # [B, k, Hk, D]   K' = E K
    v_proj = project(F_T, v)  # [B, k, Hk, Dv]  V' = F V
    group = H // Hk
    k_h = k_proj.repeat_interleave(group, dim=2)  # [B, k, H, D]
    v_h = v_proj.repeat_interleave(group, dim=2)  # [B, k, H, Dv]
    scores = scale * torch.einsum("bthd,bchd->bhtc", q, k_h)  # [B, H, T, k]
    p = torch.softmax(scores, dim=-1)  # the paper's context mapping matrix P-bar [T, k]
    o = torch.einsum("bhtc,bchd->bthd", p, v_h)  # [B, T, H, Dv]
    return o, None


__all__ = ["naive_linformer_attention"]

"""Grouped linear attention, the reference: the masked [T, T] form of the definition.

The causal "mixed chunk attention" of FLASH (Hua et al. 2022, "Transformer Quality in Linear
Time", §3.2), the grouped linear attention that You et al. (ICML 2024, arXiv 2406.07368, §3-4)
build their linearized LLMs on. Tokens are split into groups of G consecutive positions,
counted from the start of the sequence. With q~ = scale * q, for token t in group g(t):

    o_t = sum_{s <= t, g(s) = g(t)} relu(q~_t . k_s)^2 v_s       (local: quadratic in the group)
        + q~_t^T S_{g(t)},   S_g = sum_{s : g(s) < g} k_s v_s^T     (global: linear, per group)

The cumulative KV sum is taken per group (an *exclusive* cumsum over groups): a token sees the
linear summary of every earlier group, and the tokens of its own group only through the local
term. The initial state's buffered tokens are the first ``n`` tokens of the current group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.ops.common.checks import check_qkv, default_scale
from longctx.ops.grouped_linear_attention.state import (
    GroupedState,
    check_group_size,
    initial_grouped_state,
    split_final_state,
)


def naive_grouped_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    group_size: int = 64,
    scale: float | None = None,
    initial_state: GroupedState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, GroupedState | None]:
    """Grouped linear attention by its definition, O(T^2).

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; initial_state: (S [B, H, Dk, Dv], k_buf [B, G-1, H, Dk],
    v_buf [B, G-1, H, Dv], n [] int64). Returns o [B, T, H, Dv] and the final state or None.
    """
    op = "naive_grouped_linear_attention"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    G = check_group_size(group_size)
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32
    S0, k_buf, v_buf, n0 = initial_grouped_state(op, "initial_state", initial_state, q, (B, H, G, Dk, Dv), dtype)
    p = int(n0)
    qs = q.to(dtype) * default_scale(scale, Dk)  # [B, T, H, Dk]
    k_all = torch.cat([k_buf[:, :p], k.to(dtype)], dim=1)  # [B, p + T, H, Dk]: buffered first
    v_all = torch.cat([v_buf[:, :p], v.to(dtype)], dim=1)  # [B, p + T, H, Dv]

    pos_q = torch.arange(p, p + T, device=q.device)  # positions within the current stretch
    pos_k = torch.arange(p + T, device=q.device)
    g_q, g_k = pos_q // G, pos_k // G
    local = (g_q[:, None] == g_k[None, :]) & (pos_k[None, :] <= pos_q[:, None])  # [T, p + T]
    earlier = g_k[None, :] < g_q[:, None]  # key in an earlier group: reaches q through S
    scores = torch.einsum("bthd,bshd->bhts", qs, k_all)  # [B, H, T, p + T]
    zero = scores.new_zeros(())
    W = torch.where(local, F.relu(scores) ** 2, zero) + torch.where(earlier, scores, zero)
    o = torch.einsum("bhts,bshe->bthe", W, v_all) + torch.einsum("bthd,bhde->bthe", qs, S0)
    o = o.to(q.dtype).contiguous()

    if not output_final_state:
        return o, None
    complete = (p + T) // G * G  # tokens in completed groups
    S = S0 + torch.einsum("bshd,bshe->bhde", k_all[:, :complete], v_all[:, :complete])
    return o, split_final_state(S, k_all, v_all, complete, G)

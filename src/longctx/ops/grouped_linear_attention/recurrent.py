"""Grouped linear attention, the decode form: one token at a time with a constant-size state.

The state holds ``S`` (the KV sum of the completed groups) and the tokens of the current group
(at most G - 1, see ``state.py``). A token attends quadratically to the buffered tokens of its
group and to itself, and linearly to ``S``; when it completes its group, the group's KV sum is
folded into ``S`` and the buffer is emptied (Hua et al. 2022, §3.2; You et al. 2024).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.ops.common.checks import check_qkv, check_step_qkv, default_scale
from longctx.ops.grouped_linear_attention.state import (
    GroupedState,
    check_group_size,
    initial_grouped_state,
)


def _step(q_t: Tensor, k_t: Tensor, v_t: Tensor, state: GroupedState, G: int) -> tuple[Tensor, GroupedState]:
    """Unchecked step in the compute dtype: q_t (already scaled), k_t [B, H, Dk], v_t [B, H, Dv]."""
    S, k_buf, v_buf, n = state
    p = int(n)
    keys = torch.cat([k_buf[:, :p], k_t.unsqueeze(1)], dim=1)  # [B, p + 1, H, Dk]: the group so far
    vals = torch.cat([v_buf[:, :p], v_t.unsqueeze(1)], dim=1)  # [B, p + 1, H, Dv]
    w = F.relu(torch.einsum("bhd,bshd->bhs", q_t, keys)) ** 2  # local weights, [B, H, p + 1]
    o = torch.einsum("bhs,bshe->bhe", w, vals) + (q_t.unsqueeze(-2) @ S).squeeze(-2)  # [B, H, Dv]
    if p + 1 == G:  # the group is complete: fold it into S, empty the buffer
        S = S + torch.einsum("bshd,bshe->bhde", keys, vals)
        return o, (S, torch.zeros_like(k_buf), torch.zeros_like(v_buf), torch.zeros_like(n))
    k_buf = torch.cat([keys, k_buf[:, p + 1:]], dim=1)  # write slot p, keep the zeros after it
    v_buf = torch.cat([vals, v_buf[:, p + 1:]], dim=1)
    return o, (S, k_buf, v_buf, n + 1)


def grouped_linear_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    state: GroupedState | None,
    *,
    group_size: int = 64,
    scale: float | None = None,
) -> tuple[Tensor, GroupedState]:
    """One decode step. q_t, k_t [B, H, Dk]; v_t [B, H, Dv]; state (S [B, H, Dk, Dv],
    k_buf [B, G-1, H, Dk], v_buf [B, G-1, H, Dv], n [] int64) or None (empty).
    Returns o_t [B, H, Dv] and the new state (float tensors in float32 for half inputs)."""
    op = "grouped_linear_attention_step"
    B, _, H, _, Dk, Dv = check_step_qkv(op, q_t, k_t, v_t)
    G = check_group_size(group_size)
    dtype = torch.promote_types(q_t.dtype, torch.float32)
    state = initial_grouped_state(op, "state", state, q_t, (B, H, G, Dk, Dv), dtype)
    qs = q_t.to(dtype) * default_scale(scale, Dk)
    o, state = _step(qs, k_t.to(dtype), v_t.to(dtype), state, G)
    return o.to(q_t.dtype), state


def recurrent_grouped_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    group_size: int = 64,
    scale: float | None = None,
    initial_state: GroupedState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, GroupedState | None]:
    """Token-by-token grouped linear attention. q, k [B, T, H, Dk]; v [B, T, H, Dv] -> o [B, T, H, Dv]."""
    op = "recurrent_grouped_linear_attention"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    G = check_group_size(group_size)
    dtype = torch.promote_types(q.dtype, torch.float32)
    state = initial_grouped_state(op, "initial_state", initial_state, q, (B, H, G, Dk, Dv), dtype)
    qs = q.to(dtype) * default_scale(scale, Dk)
    kc, vc = k.to(dtype), v.to(dtype)
    outs = []
    for t in range(T):
        o_t, state = _step(qs[:, t], kc[:, t], vc[:, t], state, G)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, Dv, dtype=dtype)
    return o.to(q.dtype), (state if output_final_state else None)

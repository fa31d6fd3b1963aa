"""Grouped linear attention, the parallel (training) form: all groups at once.

The group *is* the chunk (Hua et al. 2022, §3.2): with the sequence cut into groups of G tokens
(Q, K, V the rows of group g, q already scaled) and S_g the KV sum of every earlier group,

    O_g = (tril(relu(Q_g K_g^T))^2) V_g + Q_g S_g,      S_{g+1} = S_g + K_g^T V_g,

so S_g is an exclusive cumulative sum over groups: a few batched einsums and one cumsum, no
Python loop. An initial state with n buffered tokens is handled by putting those tokens in front
(with zero queries) so that group boundaries stay where the sequence puts them, then dropping
their n output rows. Derivation in README.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.ops.common.checks import check_qkv, default_scale
from longctx.ops.common.chunking import pad_to_multiple
from longctx.ops.grouped_linear_attention.recurrent import recurrent_grouped_linear_attention
from longctx.ops.grouped_linear_attention.state import (
    GroupedState,
    check_group_size,
    initial_grouped_state,
    split_final_state,
)


def chunk_grouped_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    group_size: int = 64,
    scale: float | None = None,
    initial_state: GroupedState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, GroupedState | None]:
    """Grouped linear attention over whole groups in parallel.

    q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; initial_state: (S [B, H, Dk, Dv], k_buf [B, G-1, H, Dk],
    v_buf [B, G-1, H, Dv], n [] int64). Returns o [B, T, H, Dv] and the final state or None.
    ``group_size`` is part of the definition (not a tuning knob), so there is no ``chunk_size``.
    """
    op = "chunk_grouped_linear_attention"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    G = check_group_size(group_size)
    if T == 0:  # nothing to group
        return recurrent_grouped_linear_attention(
            q, k, v, group_size=G, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state,
        )
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32
    S0, k_buf, v_buf, n0 = initial_grouped_state(op, "initial_state", initial_state, q, (B, H, G, Dk, Dv), dtype)
    p = int(n0)
    qs = q.to(dtype) * default_scale(scale, Dk)
    q_all = torch.cat([qs.new_zeros(B, p, H, Dk), qs], dim=1)  # [B, p + T, H, Dk]
    k_all = torch.cat([k_buf[:, :p], k.to(dtype)], dim=1)  # the buffered tokens open the group
    v_all = torch.cat([v_buf[:, :p], v.to(dtype)], dim=1)

    def grouped(x: Tensor) -> Tensor:  # [B, L, H, D] -> [B, H, N, G, D], zero-padded at the end
        x = pad_to_multiple(x.transpose(1, 2), G, dim=2)[0]
        return x.view(B, H, -1, G, x.shape[-1])

    Qg, Kg, Vg = grouped(q_all), grouped(k_all), grouped(v_all)
    N = Qg.shape[2]
    causal = torch.ones(G, G, dtype=torch.bool, device=q.device).tril()
    # local: squared-ReLU attention inside the group (Hua et al. 2022, §2 and §3.2), causal
    A = (F.relu(Qg @ Kg.transpose(-1, -2)) ** 2).masked_fill(~causal, 0.0)  # [B, H, N, G, G]
    KV = Kg.transpose(-1, -2) @ Vg  # [B, H, N, Dk, Dv], one KV sum per group
    incl = KV.cumsum(dim=2) + S0.unsqueeze(2)  # S_{g+1}
    starts = torch.cat([S0.unsqueeze(2), incl[:, :, :-1]], dim=2)  # S_g: exclusive over groups
    o = A @ Vg + Qg @ starts  # [B, H, N, G, Dv]
    o = o.reshape(B, H, N * G, Dv)[:, :, p:p + T].transpose(1, 2).to(q.dtype).contiguous()

    if not output_final_state:
        return o, None
    n_complete = (p + T) // G  # groups completed by this call
    S = incl[:, :, n_complete - 1] if n_complete else S0
    return o, split_final_state(S, k_all, v_all, n_complete * G, G)

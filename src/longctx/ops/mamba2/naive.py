"""SSD (Mamba-2's state space dual layer, Dao & Gu 2024), the reference: the recurrence as a loop
over time.

Per head h, with a scalar decay: ``H_t = exp(dt_t A_h) H_{t-1} + dt_t x_t B_t^T`` (H_t is
``[P, N]``), ``y_t = H_t C_t + D_h x_t`` (eq. (1) with A_t = exp(dt_t A) I, B̄_t = dt_t B_t).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_state
from longctx.ops.mamba2.common import check_ssd_inputs, compute_dtype, expand_groups


def naive_ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """SSD by its recurrence.

    x: [B, T, H, P]; dt: [B, T, H] step sizes (>= 0); A: [H] (<= 0); B, C: [B, T, G, N] with
    G | H (head h uses group h // (H // G)); D: [H] skip or None; initial_state: [B, H, P, N].
    Returns y [B, T, H, P] and the final state [B, H, P, N] or None.
    """
    op = "naive_ssd"
    Bsz, T, H, P, _, N = check_ssd_inputs(op, x, dt, A, B, C, D)
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (Bsz, H, P, N))
    dtype = compute_dtype(x)

    xc, dtc, Ac = x.to(dtype), dt.to(dtype), A.to(dtype)
    Bh, Ch = expand_groups(B.to(dtype), H), expand_groups(C.to(dtype), H)  # [B, T, H, N]
    S = x.new_zeros(Bsz, H, P, N, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    outs = []
    for t in range(T):
        decay = (dtc[:, t] * Ac).exp()[..., None, None]  # exp(dt_t A_h), [B, H, 1, 1]
        u = dtc[:, t, :, None] * xc[:, t]  # dt_t x_t, [B, H, P]
        # eq. (1a): H_t = A_t H_{t-1} + B̄_t x_t, as [P, N] per head
        S = decay * S + u.unsqueeze(-1) * Bh[:, t].unsqueeze(-2)
        outs.append((S @ Ch[:, t].unsqueeze(-1)).squeeze(-1))  # eq. (1b): y_t = H_t C_t, [B, H, P]
    y = torch.stack(outs, dim=1) if outs else xc.new_zeros(Bsz, 0, H, P)
    if D is not None:
        y = y + D.to(dtype)[:, None] * xc  # the skip connection D x_t (Mamba-2 block, §7.1)
    return y.to(x.dtype), (S if output_final_state else None)


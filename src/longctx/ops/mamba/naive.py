"""Mamba-1 selective scan (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", Algorithm 2), the reference: the recurrence as a loop over time.

Per channel d and state index n:
    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] u_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] u_t[d]
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_state
from longctx.ops.mamba.inputs import as_groups, check_scan_inputs, compute_dtype, expand_groups


def naive_selective_scan(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The selective scan by its recurrence.

    u, dt: [B, T, Dn] (dt > 0, after softplus); A: [Dn, N] (< 0); B, C: [B, T, N] shared by all
    channels, or [B, T, G, N] with channel d reading group d // (Dn / G); D: [Dn] or None;
    initial_state: h [B, Dn, N]. Returns y [B, T, Dn] and the final h or None.
    """
    op = "naive_selective_scan"
    batch, T, Dn, N, _ = check_scan_inputs(op, u, dt, A, B, C, D)
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (batch, Dn, N))
    dtype = compute_dtype(u, dt, A, B, C, D, initial_state)  # half inputs are computed in float32

    uc, dtc, Ac = u.to(dtype), dt.to(dtype), A.to(dtype)
    Bc = expand_groups(as_groups(B.to(dtype), 3), Dn)  # [B, T, Dn, N]
    Cc = expand_groups(as_groups(C.to(dtype), 3), Dn)
    h = u.new_zeros(batch, Dn, N, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    ys = []
    for t in range(T):
        A_bar = torch.exp(dtc[:, t, :, None] * Ac)  # eq. 4 (ZOH): A_bar = exp(dt A), [B, Dn, N]
        B_bar_u = (dtc[:, t] * uc[:, t])[:, :, None] * Bc[:, t]  # simplified B_bar u = dt B u
        h = A_bar * h + B_bar_u  # eq. 2a
        ys.append((Cc[:, t] * h).sum(-1))  # eq. 2b: y_t = C_t h_t, [B, Dn]
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(batch, 0, Dn, dtype=dtype)
    if D is not None:
        y = y + D.to(dtype) * uc  # the skip connection D u (Algorithm 2 / Fig. 3)
    return y.to(u.dtype), (h if output_final_state else None)

"""Mamba-1 selective scan, recurrent form (Gu & Dao 2023, eq. 2a/2b): one token at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_state
from longctx.ops.mamba.inputs import as_groups, check_scan_inputs, compute_dtype


def _step(
    u_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, D: Tensor | None, h: Tensor
) -> tuple[Tensor, Tensor]:
    """Unchecked step: u_t, dt_t [B, Dn]; A [Dn, N]; B_t, C_t [B, G, N]; h [B, Dn, N]."""
    batch, Dn = u_t.shape
    G, N = B_t.shape[-2:]
    # eq. 4 with B_bar = dt B: h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t (eq. 2a), per group of channels
    B_bar_u = (dt_t * u_t).view(batch, G, Dn // G, 1) * B_t.unsqueeze(-2)  # [B, G, Dn/G, N]
    h = torch.exp(dt_t.unsqueeze(-1) * A) * h + B_bar_u.view(batch, Dn, N)
    y = (h.view(batch, G, Dn // G, N) @ C_t.unsqueeze(-1)).view(batch, Dn)  # eq. 2b: C_t h_t
    if D is not None:
        y = y + D * u_t
    return y, h


def selective_scan_step(
    u_t: Tensor,
    dt_t: Tensor,
    A: Tensor,
    B_t: Tensor,
    C_t: Tensor,
    state: Tensor | None,
    *,
    D: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One decode step. u_t, dt_t [B, Dn] (dt_t > 0); A [Dn, N] (< 0); B_t, C_t [B, N] or
    [B, G, N]; D [Dn] or None; state h [B, Dn, N] or None (zeros).
    Returns y_t [B, Dn] and the new h (float32 for half inputs)."""
    op = "selective_scan_step"
    batch, _, Dn, N, _ = check_scan_inputs(op, u_t, dt_t, A, B_t, C_t, D, step=True)
    dtype = compute_dtype(u_t, dt_t, A, B_t, C_t, D, state)
    if state is None:
        state = u_t.new_zeros(batch, Dn, N, dtype=dtype)
    check_state(op, "state", state, (batch, Dn, N))
    y, h = _step(
        u_t.to(dtype), dt_t.to(dtype), A.to(dtype), as_groups(B_t.to(dtype), 2),
        as_groups(C_t.to(dtype), 2), None if D is None else D.to(dtype), state.to(dtype),
    )
    return y.to(u_t.dtype), h


def recurrent_selective_scan(
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
    """Token-by-token selective scan. u, dt [B, T, Dn]; A [Dn, N]; B, C [B, T, (G,) N]
    -> y [B, T, Dn] and the final h [B, Dn, N] or None."""
    op = "recurrent_selective_scan"
    batch, T, Dn, N, _ = check_scan_inputs(op, u, dt, A, B, C, D)
    dtype = compute_dtype(u, dt, A, B, C, D, initial_state)
    if initial_state is None:
        h = u.new_zeros(batch, Dn, N, dtype=dtype)
    else:
        check_state(op, "initial_state", initial_state, (batch, Dn, N))
        h = initial_state.to(dtype)
    uc, dtc, Ac = u.to(dtype), dt.to(dtype), A.to(dtype)
    Bc, Cc = as_groups(B.to(dtype), 3), as_groups(C.to(dtype), 3)  # [B, T, G, N]
    Dc = None if D is None else D.to(dtype)
    ys = []
    for t in range(T):
        y_t, h = _step(uc[:, t], dtc[:, t], Ac, Bc[:, t], Cc[:, t], Dc, h)
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(batch, 0, Dn, dtype=dtype)
    return y.to(u.dtype), (h if output_final_state else None)

"""SSD (Mamba-2) through the scalar-decay Triton kernels (import needs Triton).

The scalar SSM h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t (Dao & Gu 2024, eq. (3))
is linear attention with a scalar decay: q = C, k = B, v = dt x, g = dt A, scale 1, and the
state S = h^T ([N, P]). Groups are expanded to heads (each head reads its group's B and C).
"""

from __future__ import annotations

from torch import Tensor

from longctx.ops.common.triton_scalar_decay import scalar_decay_chunk


def triton_ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Arguments as ``chunk_ssd``; initial_state [N, H, P, N_state]. Returns y and the final state."""
    H, G = x.shape[2], B.shape[2]
    R = H // G  # head h reads group h // R
    q = C.repeat_interleave(R, dim=2) if R > 1 else C
    k = B.repeat_interleave(R, dim=2) if R > 1 else B
    g = dt * A.to(dt.dtype)  # a_t = dt_t A_h
    v = (dt.unsqueeze(-1) * x).to(x.dtype)  # dt_t x_t
    h0 = initial_state.transpose(-1, -2) if initial_state is not None else None
    y, ht = scalar_decay_chunk(q.to(x.dtype), k.to(x.dtype), v, g, scale=1.0, initial_state=h0,
                               output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    if D is not None:
        y = y + (D.to(y.dtype)[:, None] * x).to(y.dtype)  # skip connection D x_t
    # contiguous: a decode step continuing from it (``backend.inplace_decode``) updates a state in place
    # only where it is laid out as [N, H, P, N_state]
    return y, (ht.transpose(-1, -2).contiguous() if ht is not None else None)

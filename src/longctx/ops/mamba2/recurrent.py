"""SSD (Mamba-2), recurrent form: one token at a time with a ``[B, H, P, N]`` state
(Dao & Gu 2024, eq. (1), the linear-time "SSM mode")."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import checkable, decode_inplace, decode_unsupported, wants_triton
from longctx.ops.common.checks import check_state
from longctx.ops.mamba2.common import check_ssd_inputs, compute_dtype, expand_groups


def _step(
    x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, S: Tensor
) -> tuple[Tensor, Tensor]:
    """Unchecked step without D: x_t [B, H, P], dt_t [B, H], A [H], B_t, C_t [B, H, N] (already
    expanded to heads), S [B, H, P, N]. Returns y_t [B, H, P] and the new S."""
    decay = (dt_t * A).exp()[..., None, None]  # exp(dt_t A_h), [B, H, 1, 1]
    # eq. (1a): H_t = exp(dt_t A) H_{t-1} + (dt_t x_t) B_t^T
    S = decay * S + (dt_t[..., None] * x_t).unsqueeze(-1) * B_t.unsqueeze(-2)
    return (S @ C_t.unsqueeze(-1)).squeeze(-1), S  # eq. (1b): y_t = H_t C_t


def ssd_step(
    x_t: Tensor,
    dt_t: Tensor,
    A: Tensor,
    B_t: Tensor,
    C_t: Tensor,
    state: Tensor | None,
    *,
    D: Tensor | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One decode step. x_t [B, H, P]; dt_t [B, H] (>= 0); A [H] (<= 0); B_t, C_t [B, G, N];
    state [B, H, P, N] or None (zeros); D [H] or None. Returns y_t [B, H, P] and the new state
    (float32 for half inputs). ``backend``: "auto" (default) runs the fused Triton step on CUDA
    tensors (``triton_decode``: q = C, k = B, v = dt x, g = dt A on the transposed state)."""
    op = "ssd_step"
    cD = None if D is None else checkable(D)[0]
    Bsz, _, H, P, _, N = check_ssd_inputs(op, *checkable(x_t, dt_t, A, B_t, C_t), cD, step=True)
    dtype = compute_dtype(x_t)
    if state is None:
        state = x_t.new_zeros(Bsz, H, P, N, dtype=dtype)
    check_state(op, "state", state, (Bsz, H, P, N))
    xc = x_t.to(dtype)
    if wants_triton(op, backend, x_t, dt_t, A, B_t, C_t, state, supported=decode_unsupported(N)):
        from longctx.ops.common.triton_decode import fused_recurrent_step

        dtc = dt_t.to(dtype)
        S = state.to(dtype)
        y, S, _ = fused_recurrent_step(C_t, B_t, dtc[..., None] * xc, S, g=dtc * A.to(dtype),
                                       transposed=True, inplace=decode_inplace(S, dtype))
    else:
        y, S = _step(
            xc, dt_t.to(dtype), A.to(dtype), expand_groups(B_t.to(dtype), H),
            expand_groups(C_t.to(dtype), H), state.to(dtype),
        )
    if D is not None:
        y = y + D.to(dtype)[:, None] * xc
    return y.to(x_t.dtype), S


def recurrent_ssd(
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
    """Token-by-token SSD. x [B, T, H, P], dt [B, T, H], A [H], B, C [B, T, G, N], D [H] or None,
    initial_state [B, H, P, N] -> y [B, T, H, P] and the final state or None."""
    op = "recurrent_ssd"
    Bsz, T, H, P, _, N = check_ssd_inputs(op, x, dt, A, B, C, D)
    dtype = compute_dtype(x)
    if initial_state is None:
        S = x.new_zeros(Bsz, H, P, N, dtype=dtype)
    else:
        check_state(op, "initial_state", initial_state, (Bsz, H, P, N))
        S = initial_state.to(dtype)
    xc, dtc, Ac = x.to(dtype), dt.to(dtype), A.to(dtype)
    Bh, Ch = expand_groups(B.to(dtype), H), expand_groups(C.to(dtype), H)  # [B, T, H, N]
    outs = []
    for t in range(T):
        y_t, S = _step(xc[:, t], dtc[:, t], Ac, Bh[:, t], Ch[:, t], S)
        outs.append(y_t)
    y = torch.stack(outs, dim=1) if outs else xc.new_zeros(Bsz, 0, H, P)
    if D is not None:
        y = y + D.to(dtype)[:, None] * xc
    return y.to(x.dtype), (S if output_final_state else None)

"""SSD as gated linear attention (Dao & Gu 2024, §5: SSD is linear attention with a 1-semiseparable
mask). With q = C, k = B, v = dt x and the per-token scalar log-gate g = dt A (broadcast over
the key dim N), ``naive_gla(**ssd_as_gla_inputs(...))`` equals ``naive_ssd`` without D.

State layouts differ by a transpose: SSD's ``[B, H, P, N]`` is gla's ``S [B, H, Dk=N, Dv=P]``
transposed in its last two dims.
"""

from __future__ import annotations

from torch import Tensor

from longctx.ops.common.checks import check_state
from longctx.ops.mamba2.common import check_ssd_inputs, compute_dtype, expand_groups


def ssd_as_gla_inputs(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    initial_state: Tensor | None = None,
) -> dict[str, Tensor | float]:
    """The keyword arguments of ``naive_gla`` / ``chunk_gla`` that compute SSD (without D).

    x [B, T, H, P], dt [B, T, H], A [H], B, C [B, T, G, N], initial_state [B, H, P, N] ->
    ``{"q": C [B, T, H, N], "k": B [B, T, H, N], "v": dt x [B, T, H, P],
    "g": dt A [B, T, H, N], "scale": 1.0}`` plus ``"initial_state"`` [B, H, N, P] when given.
    Half inputs are cast to float32 (the gates must be).
    """
    op = "ssd_as_gla_inputs"
    Bsz, T, H, P, _, N = check_ssd_inputs(op, x, dt, A, B, C)
    dtype = compute_dtype(x)
    dtc = dt.to(dtype)
    out: dict[str, Tensor | float] = {
        "q": expand_groups(C.to(dtype), H),
        "k": expand_groups(B.to(dtype), H),
        "v": dtc[..., None] * x.to(dtype),
        "g": (dtc * A.to(dtype))[..., None].expand(Bsz, T, H, N),
        "scale": 1.0,
    }
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (Bsz, H, P, N))
        out["initial_state"] = initial_state.transpose(-1, -2)
    return out

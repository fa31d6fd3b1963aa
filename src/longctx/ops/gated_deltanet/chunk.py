"""Gated DeltaNet, chunkwise-parallel form (Yang, Kautz, Hatamizadeh 2025, §3.3): the WY / UT
transform of DeltaNet (Yang et al. 2024, §3.3) with the chunk-local decays of Mamba-2 folded in.
The shared core is ``longctx.ops.deltanet.chunk.chunk_delta_core``; derivation in README.md.
Every exp is of a difference G_i - G_j <= 0 of chunk-local cumulative log-gates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.backend import kernel_unsupported, wants_triton
from longctx.ops.common.checks import (
    check_chunk_size,
    check_gate,
    check_qkv,
    check_state,
    default_scale,
)
from longctx.ops.deltanet.checks import check_beta, prepare_qk
from longctx.ops.deltanet.chunk import chunk_delta_core
from longctx.ops.gated_deltanet.recurrent import recurrent_gated_delta_rule


def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    use_qk_l2norm: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise Gated DeltaNet.

    q, k: [B, T, H, Dk] (k unit-norm, or ``use_qk_l2norm=True`` to normalise q and k here);
    v: [B, T, H, Dv]; g: [B, T, H] log decay (<= 0); beta: [B, T, H] in [0, 2];
    initial_state: S [B, H, Dk, Dv]. Returns o [B, T, H, Dv] and the final S or None.
    """
    op = "chunk_gated_delta_rule"
    B, T, H, _, Dk, Dv = check_qkv(op, q, k, v)
    C = check_chunk_size(chunk_size)
    check_gate(op, "g", g, (B, T, H), log_space=True)
    check_beta(op, "beta", beta, (B, T, H))
    if initial_state is not None:
        check_state(op, "initial_state", initial_state, (B, H, Dk, Dv))
    if T == 0:  # nothing to chunk
        return recurrent_gated_delta_rule(
            q, k, v, g, beta, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, use_qk_l2norm=use_qk_l2norm,
        )
    dtype = torch.promote_types(q.dtype, torch.float32)  # half inputs are computed in float32
    qc, kc = prepare_qk(op, q, k, use_qk_l2norm, dtype)
    if wants_triton(op, backend, q, k, v, g, beta, initial_state, supported=kernel_unsupported(Dk, Dv)):
        from longctx.ops.gated_deltanet.triton import triton_gated_delta_rule

        return triton_gated_delta_rule(
            qc.to(q.dtype), kc.to(q.dtype), v.to(q.dtype), g, beta, scale=default_scale(scale, Dk),
            initial_state=initial_state, output_final_state=output_final_state,
        )
    S0 = q.new_zeros(B, H, Dk, Dv, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    o, S = chunk_delta_core(
        qc * default_scale(scale, Dk), kc, v.to(dtype), beta.to(dtype), g.to(dtype), S0, C
    )
    return o.to(q.dtype).contiguous(), (S if output_final_state else None)

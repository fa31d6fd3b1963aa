"""Multi-Token Attention blocked over queries: a block of C queries needs only its C logit rows
plus the ``c_q - 1`` rows before it, against the keys up to its last position, so no ``T x T``
matrix is ever held: memory is O(C * T) per block. Each block runs under
``torch.utils.checkpoint`` (recomputed in the backward), so what autograd keeps for training is
the O(T * D) inputs, not the block's logits. Derivation in README.md.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from longctx.ops.common.checks import (
    check_bidirectional,
    check_chunk_size,
    check_qkv,
    default_scale,
)
from longctx.ops.multi_token_attention.kernels import attend_block, check_kernels
from longctx.ops.multi_token_attention.state import (
    MTAState,
    check_mta_state,
    empty_state,
    past_queries,
)


def chunk_multi_token_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kq_kernel: Tensor,
    head_kernel: Tensor | None = None,
    scale: float | None = None,
    causal: bool = True,
    initial_state: MTAState | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, MTAState | None]:
    """Multi-Token Attention in query blocks of ``chunk_size``: O(chunk_size * T) memory.

    Arguments, shapes, state and result as in ``naive_multi_token_attention``: q ``[B, T, H, D]``,
    k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]``, ``kq_kernel [H, c_q, c_k]``,
    ``head_kernel [H // c_h, c_h, c_h]`` or None; returns ``(o [B, T, H, Dv], final_state)``.
    """
    op = "chunk_multi_token_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    c_q, _, _ = check_kernels(op, kq_kernel, head_kernel, H, q)
    causal = check_bidirectional(op, causal, initial_state, output_final_state)
    chunk_size = check_chunk_size(chunk_size)
    scale = default_scale(scale, D)
    state = check_mta_state(op, initial_state, B, H, Hk, D, Dv, c_q, q)
    if state is None:
        state = empty_state(B, H, Hk, D, Dv, c_q, q)
    k_cache, v_cache, q_cache = state
    S = k_cache.shape[1]
    k_all = torch.cat([k_cache, k], dim=1)  # [B, L, Hk, D], key j <-> position j
    v_all = torch.cat([v_cache, v], dim=1)  # [B, L, Hk, Dv]
    q_ext = torch.cat([past_queries(q_cache, S), q], dim=1)  # [B, c_q-1+T, H, D]
    R, L = q_ext.shape[1], k_all.shape[1]  # row r <-> query at position S - (c_q - 1) + r
    q_ext_g = q_ext.reshape(B, R, Hk, H // Hk, D)  # [B, R, Hk, G, D]

    tensors = (q, k, v, kq_kernel, head_kernel, k_cache, v_cache, q_cache)
    recompute = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors
    )
    outs = []
    for i0 in range(0, T, chunk_size):
        i1 = min(i0 + chunk_size, T)
        L_b = S + i1 if causal else L  # causal: keys after the block's last query are never read
        args = (q_ext_g[:, i0 : i1 + c_q - 1], k_all[:, :L_b], v_all[:, :L_b], kq_kernel,
                head_kernel, scale, causal, S - (c_q - 1) + i0)
        if recompute:  # keep only the block's inputs; its [C, L_b] logits are recomputed
            outs.append(checkpoint(attend_block, *args, use_reentrant=False))
        else:
            outs.append(attend_block(*args))
    o = torch.cat(outs, dim=1) if outs else q.new_zeros(B, 0, H, Dv)  # [B, T, H, Dv]

    final = None
    if output_final_state:
        final = (k_all, v_all, q_ext[:, R - (c_q - 1):])
    return o, final


__all__ = ["chunk_multi_token_attention"]

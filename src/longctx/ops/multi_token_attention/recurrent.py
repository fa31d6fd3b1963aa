"""Multi-Token Attention, decode form: one token at a time against a KV cache, keeping the last
``c_q - 1`` queries so the query axis of the key-query convolution can be evaluated."""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_qkv, check_step_qkv, default_scale
from longctx.ops.multi_token_attention.kernels import attend_block, check_kernels
from longctx.ops.multi_token_attention.state import (
    MTAState,
    check_mta_state,
    empty_state,
    past_queries,
)


def _step(q_t: Tensor, k_t: Tensor, v_t: Tensor, state: MTAState, kq_kernel: Tensor,
          head_kernel: Tensor | None, scale: float) -> tuple[Tensor, MTAState]:
    """Unchecked step; shapes as in ``multi_token_attention_step``."""
    B, H, D = q_t.shape
    k_cache, v_cache, q_cache = state
    S, Hk = k_cache.shape[1], k_cache.shape[2]
    k_all = torch.cat([k_cache, k_t[:, None]], dim=1)  # [B, S+1, Hk, D]
    v_all = torch.cat([v_cache, v_t[:, None]], dim=1)  # [B, S+1, Hk, Dv]
    q_rows = torch.cat([past_queries(q_cache, S), q_t[:, None]], dim=1)  # [B, c_q, H, D]
    c_q = q_rows.shape[1]
    # the new token's logit row and the c_q - 1 rows before it, against every key (all <= S)
    o = attend_block(q_rows.reshape(B, c_q, Hk, H // Hk, D), k_all, v_all, kq_kernel,
                     head_kernel, scale, True, S - (c_q - 1))  # [B, 1, H, Dv]
    return o[:, 0], (k_all, v_all, q_rows[:, 1:])


def multi_token_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    state: MTAState | None,
    kq_kernel: Tensor,
    head_kernel: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, MTAState]:
    """One causal decode step: q_t ``[B, H, D]``, k_t ``[B, Hk, D]``, v_t ``[B, Hk, Dv]``.

    ``state = (k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv], q_cache [B, c_q - 1, H, D])`` or
    ``None`` (empty). Returns ``o_t [B, H, Dv]`` and the new state (new tensors; the input is not
    modified): the cache one token longer and the last ``c_q - 1`` queries.
    """
    op = "multi_token_attention_step"
    B, _, H, Hk, D, Dv = check_step_qkv(op, q_t, k_t, v_t, allow_gqa=True)
    c_q, _, _ = check_kernels(op, kq_kernel, head_kernel, H, q_t)
    state = check_mta_state(op, state, B, H, Hk, D, Dv, c_q, q_t)
    if state is None:
        state = empty_state(B, H, Hk, D, Dv, c_q, q_t)
    return _step(q_t, k_t, v_t, state, kq_kernel, head_kernel, default_scale(scale, D))


def recurrent_multi_token_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kq_kernel: Tensor,
    head_kernel: Tensor | None = None,
    scale: float | None = None,
    initial_state: MTAState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, MTAState | None]:
    """Causal MTA by looping ``multi_token_attention_step`` over the T tokens.

    Arguments, state and result as in ``naive_multi_token_attention`` (causal only).
    """
    op = "recurrent_multi_token_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    c_q, _, _ = check_kernels(op, kq_kernel, head_kernel, H, q)
    scale = default_scale(scale, D)
    state = check_mta_state(op, initial_state, B, H, Hk, D, Dv, c_q, q)
    if state is None:
        state = empty_state(B, H, Hk, D, Dv, c_q, q)
    outs = []
    for t in range(T):
        o_t, state = _step(q[:, t], k[:, t], v[:, t], state, kq_kernel, head_kernel, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, Dv)  # [B, T, H, Dv]
    if T == 0:  # the final state of no tokens: the input state, rows at negative positions zeroed
        state = (state[0], state[1], past_queries(state[2], state[0].shape[1]))
    return o, (state if output_final_state else None)


__all__ = ["multi_token_attention_step", "recurrent_multi_token_attention"]

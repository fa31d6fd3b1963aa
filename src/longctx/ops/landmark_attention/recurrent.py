"""Landmark attention, decode form with top-k block retrieval (Mohtashami & Jaggi 2023).

Each step scores the query against the landmark keys of all complete blocks (``N`` dot products
per head), keeps the ``top_k`` blocks with the highest landmark scores, per query head, as the
paper's inference does, and evaluates the grouped softmax over the own (open) block and the
retrieved blocks only: the first group is renormalised over the retrieved landmarks. Cost per
token: ``O(N + (top_k + 1) * block_size)`` dot products, ``N = S // block_size``; the block store
is copied once per ``block_size`` tokens (when a block completes). ``top_k=None`` (or
``>= N``) retrieves every block: exactly the full grouped softmax of ``naive.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import (
    check_positive_int,
    check_qkv,
    check_state,
    check_step_qkv,
    default_scale,
)
from longctx.ops.landmark_attention.state import (
    LandmarkCache,
    cache_length,
    check_landmark_cache,
    check_landmarks,
    empty_cache,
)


def check_top_k(top_k: object) -> int | None:
    """``None`` (every block) or a positive int."""
    if top_k is None:
        return None
    return check_positive_int("top_k", top_k)


def _gather_blocks(blocks: Tensor, idx: Tensor) -> Tensor:
    """``blocks [B, N, bs, Hk, E]``, ``idx [B, Hk, G, k]`` -> the chosen blocks
    ``[B, Hk, G, k, bs, E]``; only those are read."""
    B, _, bs, Hk, E = blocks.shape
    G, kk = idx.shape[2:]
    by_head = blocks.permute(0, 3, 1, 2, 4)  # [B, Hk, N, bs, E] (a view)
    index = idx.reshape(B, Hk, G * kk, 1, 1).expand(B, Hk, G * kk, bs, E)
    return torch.gather(by_head, 2, index).view(B, Hk, G, kk, bs, E)


def _step(q_t, k_t, v_t, kl_t, state: LandmarkCache, scale: float, top_k: int | None):
    """Unchecked step; returns ``(o_t [B, H, Dv], new state, selected [B, H, k])``."""
    k_blocks, v_blocks, kl, k_tail, v_tail = state
    B, H, D = q_t.shape
    Hk, G = k_t.shape[1], H // k_t.shape[1]
    N, bs, r = k_blocks.shape[1], k_blocks.shape[2], k_tail.shape[1]
    k_own = torch.cat([k_tail, k_t[:, None]], dim=1)  # [B, r+1, Hk, D]: the open block
    v_own = torch.cat([v_tail, v_t[:, None]], dim=1)  # [B, r+1, Hk, Dv]
    q_g = q_t.reshape(B, Hk, G, D) * scale  # [B, Hk, G, D]: query head h reads kv head h // G
    s_own = torch.einsum("bhgd,bjhd->bhgj", q_g, k_own)  # [B, Hk, G, r+1]
    s_lm = torch.einsum("bhgd,bnhd->bhgn", q_g, kl)  # [B, Hk, G, N] every landmark

    if top_k is None or top_k >= N:  # every block: the full grouped softmax
        sel = torch.arange(N, device=q_t.device).expand(B, Hk, G, N)
        s_blk = torch.einsum("bhgd,bnjhd->bhgnj", q_g, k_blocks)  # [B, Hk, G, N, bs]
        u = torch.einsum("bhgnj,bnjhd->bhgnd", torch.softmax(s_blk, dim=-1), v_blocks)
        s_sel = s_lm
    else:  # retrieval: the top_k landmark scores per query head
        s_sel, sel = s_lm.topk(top_k, dim=-1)  # [B, Hk, G, k]
        kb, vb = _gather_blocks(k_blocks, sel), _gather_blocks(v_blocks, sel)
        s_blk = torch.einsum("bhgd,bhgnjd->bhgnj", q_g, kb)  # [B, Hk, G, k, bs]
        u = torch.einsum("bhgnj,bhgnjd->bhgnd", torch.softmax(s_blk, dim=-1), vb)
    # first group over the open block's keys and the retrieved landmarks
    p = torch.softmax(torch.cat([s_own, s_sel], dim=-1), dim=-1)
    p_own, p_lm = p.split([r + 1, s_sel.shape[-1]], dim=-1)
    o_t = torch.einsum("bhgj,bjhd->bhgd", p_own, v_own) + torch.einsum("bhgn,bhgnd->bhgd", p_lm, u)

    if r + 1 == bs:  # this token completes its block: move it to the block store
        k_blocks = torch.cat([k_blocks, k_own[:, None]], dim=1)
        v_blocks = torch.cat([v_blocks, v_own[:, None]], dim=1)
        kl = torch.cat([kl, kl_t[:, None]], dim=1)
        k_own, v_own = k_own[:, :0], v_own[:, :0]
    new = (k_blocks, v_blocks, kl, k_own, v_own)
    return o_t.reshape(B, H, -1), new, sel.reshape(B, H, -1)


def landmark_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    k_landmark_t: Tensor | None,
    state: LandmarkCache | None,
    block_size: int,
    scale: float | None = None,
    top_k: int | None = None,
    return_selected: bool = False,
):
    """One decode step: q_t ``[B, H, D]``, k_t ``[B, Hk, D]``, v_t ``[B, Hk, Dv]``.

    ``k_landmark_t [B, Hk, D]``: the landmark key of the block this token completes; required
    when it completes one (``(S + 1) % block_size == 0``) and ``None`` otherwise. ``state`` as in
    ``naive_landmark_attention`` (``None``: empty). ``top_k``: blocks retrieved per query head by
    landmark score (``None``: all). Returns ``(o_t [B, H, Dv], new_state)``, and with
    ``return_selected`` also the retrieved block indices ``[B, H, k]`` (by falling score for
    ``top_k < N``, ascending otherwise). The input state is not modified.
    """
    op = "landmark_attention_step"
    B, _, _, Hk, D, Dv = check_step_qkv(op, q_t, k_t, v_t, allow_gqa=True)
    bs = check_positive_int("block_size", block_size)
    top_k = check_top_k(top_k)
    state = check_landmark_cache(op, state, B, bs, Hk, D, Dv, q_t)
    if state is None:
        state = empty_cache(B, bs, Hk, D, Dv, q_t)
    S = cache_length(state)
    if (S + 1) % bs == 0:
        if k_landmark_t is None:
            raise ValueError(f"{op}: this token (position {S}) completes a block of "
                             f"block_size={bs}; pass its landmark key k_landmark_t [B, Hk, D]")
        check_state(op, "k_landmark_t", k_landmark_t, (B, Hk, D))
        if k_landmark_t.dtype != q_t.dtype or k_landmark_t.device != q_t.device:
            raise TypeError(f"{op}: k_landmark_t must have q_t's dtype {q_t.dtype} and device "
                            f"{q_t.device}, got {k_landmark_t.dtype} on {k_landmark_t.device}")
    elif k_landmark_t is not None:
        raise ValueError(f"{op}: k_landmark_t must be None: the token at position {S} does not "
                         f"complete a block of block_size={bs}")
    o_t, new, sel = _step(q_t, k_t, v_t, k_landmark_t, state, default_scale(scale, D), top_k)
    return (o_t, new, sel) if return_selected else (o_t, new)


def recurrent_landmark_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_landmark: Tensor,
    block_size: int,
    scale: float | None = None,
    initial_state: LandmarkCache | None = None,
    output_final_state: bool = False,
    top_k: int | None = None,
) -> tuple[Tensor, LandmarkCache | None]:
    """Landmark attention by looping ``landmark_attention_step`` over the T tokens.

    Arguments, state and result as in ``naive_landmark_attention``; ``top_k`` as in the step
    (``None``: equal to the naive form).
    """
    op = "recurrent_landmark_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    bs = check_positive_int("block_size", block_size)
    top_k = check_top_k(top_k)
    scale = default_scale(scale, D)
    state = check_landmark_cache(op, initial_state, B, bs, Hk, D, Dv, q)
    if state is None:
        state = empty_cache(B, bs, Hk, D, Dv, q)
    S = cache_length(state)
    check_landmarks(op, k_landmark, B, S, T, bs, Hk, D, q)
    outs, n_done = [], 0
    for t in range(T):
        kl_t = None
        if (S + t + 1) % bs == 0:  # token t completes a block: its landmark enters the state
            kl_t, n_done = k_landmark[:, n_done], n_done + 1
        o_t, state, _ = _step(q[:, t], k[:, t], v[:, t], kl_t, state, scale, top_k)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, Dv)  # [B, T, H, Dv]
    return o, (state if output_final_state else None)


__all__ = ["check_top_k", "landmark_attention_step", "recurrent_landmark_attention"]

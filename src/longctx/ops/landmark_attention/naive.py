"""Landmark attention, the grouped-softmax definition with explicit ``T x (S+T)`` weights
(Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite Context Length for
Transformers", arXiv 2305.16300; the grouped softmax as in the authors' reference code).

The sequence is cut into blocks of ``block_size`` tokens (block ``b`` = positions
``b*bs .. (b+1)*bs - 1``); every complete block has a landmark key. For the query at position
``p`` in block ``c = p // bs``:

* first group (one softmax): the own-block keys ``c*bs <= j <= p`` and the landmark keys of the
  earlier blocks ``0 .. c-1``. An own-block key takes its weight from this softmax directly.
* block groups (one softmax per earlier block ``b < c``) over all ``bs`` keys of block ``b``.
  Key ``j`` of block ``b`` gets weight ``P(landmark b) * softmax_b(s)_j``.
* landmarks carry no value: their weight is handed to their block's tokens, so the weights of
  the real keys sum to 1. The landmark of the query's own block is never used (it does not exist
  before the block is complete; the authors' code masks it even for the landmark token itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.ops.common.checks import check_positive_int, check_qkv, default_scale
from longctx.ops.landmark_attention.state import (
    LandmarkCache,
    cache_length,
    check_landmark_cache,
    check_landmarks,
    join_cache,
    split_cache,
)


def naive_landmark_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_landmark: Tensor,
    block_size: int,
    scale: float | None = None,
    initial_state: LandmarkCache | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, LandmarkCache | None]:
    """Causal landmark attention (grouped softmax over blocks), the O(T (S+T)) definition.

    q ``[B, T, H, D]``, k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]`` (GQA: query head h reads kv
    head ``h // (H // Hk)``). ``k_landmark [B, n, Hk, D]``: the landmark keys of the
    ``n = (S + T) // bs - S // bs`` blocks that this call completes, in order (the open last
    block has none yet). Nothing has to divide: T and S need not be multiples of ``block_size``.
    ``initial_state`` holds the S earlier tokens (``state.py``); the new queries sit at positions
    ``S .. S+T-1``. Returns ``o [B, T, H, Dv]`` and, with ``output_final_state``, the state after
    the T new tokens.
    """
    op = "naive_landmark_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    bs = check_positive_int("block_size", block_size)
    scale = default_scale(scale, D)
    cache = check_landmark_cache(op, initial_state, B, bs, Hk, D, Dv, q)
    S = cache_length(cache)
    check_landmarks(op, k_landmark, B, S, T, bs, Hk, D, q)
    k_all, v_all, kl_all = join_cache(cache, k, v, k_landmark)  # [B, L, Hk, *], [B, N, Hk, D]
    L, N = S + T, kl_all.shape[1]

    group = H // Hk
    k_h = k_all.repeat_interleave(group, dim=2)  # [B, L, H, D]
    v_h = v_all.repeat_interleave(group, dim=2)  # [B, L, H, Dv]
    kl_h = kl_all.repeat_interleave(group, dim=2)  # [B, N, H, D]
    s = scale * torch.einsum("bthd,bshd->bhts", q, k_h)  # [B, H, T, L] token scores
    s_lm = scale * torch.einsum("bthd,bnhd->bhtn", q, kl_h)  # [B, H, T, N] landmark scores

    pos = S + torch.arange(T, device=q.device)  # query positions
    blk = pos // bs  # query blocks c
    j = torch.arange(L, device=q.device)
    own = (j[None, :] // bs == blk[:, None]) & (j[None, :] <= pos[:, None])  # [T, L]
    earlier = torch.arange(N, device=q.device)[None, :] < blk[:, None]  # [T, N]: landmarks b < c

    # first group: own-block keys (causal) and the landmarks of the earlier blocks
    first = torch.cat([s.masked_fill(~own, float("-inf")),
                       s_lm.masked_fill(~earlier, float("-inf"))], dim=-1)
    p_own, p_lm = torch.softmax(first, dim=-1).split([L, N], dim=-1)  # [B,H,T,L], [B,H,T,N]
    # block groups: a softmax over each complete block's keys, scaled by its landmark's weight
    a = torch.softmax(s[..., : N * bs].reshape(B, H, T, N, bs), dim=-1)  # [B, H, T, N, bs]
    w_far = (p_lm[..., None] * a).reshape(B, H, T, N * bs)  # zero for blocks b >= c
    w = p_own + F.pad(w_far, (0, L - N * bs))  # [B, H, T, L]: each row sums to 1
    o = torch.einsum("bhts,bshd->bthd", w, v_h)  # [B, T, H, Dv]

    final = split_cache(k_all, v_all, kl_all, bs) if output_final_state else None
    return o, final


__all__ = ["naive_landmark_attention"]

"""Multi-Token Attention, the definition on the full logit matrix (Golovneva et al. 2025,
"Multi-Token Attention", §3): pre-softmax key-query convolution with the paper's masking
``A = Softmax(Mask_-inf(Conv2d_theta(Mask_0(Q K^T / sqrt(d)))))``, then post-softmax head mixing
``A_new^h = sum_{h'} w_{h, h'} A^{h'}`` within groups of c_h heads, and ``o = A_new V``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_bidirectional, check_qkv, default_scale
from longctx.ops.multi_token_attention.kernels import check_kernels
from longctx.ops.multi_token_attention.state import (
    MTAState,
    check_mta_state,
    empty_state,
    past_queries,
)


def _shift_keys(x: Tensor, s: int) -> Tensor:
    """``out[..., j] = x[..., j - s]``, zero where ``j - s`` falls outside ``[0, L)``."""
    L = x.shape[-1]
    if abs(s) >= L:
        return torch.zeros_like(x)
    pad = x.new_zeros(*x.shape[:-1], abs(s))
    return torch.cat([pad, x[..., : L - s]], -1) if s >= 0 else torch.cat([x[..., -s:], pad], -1)


def naive_multi_token_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kq_kernel: Tensor,
    head_kernel: Tensor | None = None,
    scale: float | None = None,
    causal: bool = True,
    initial_state: MTAState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, MTAState | None]:
    """Multi-Token Attention on the whole ``[T, S + T]`` logit matrix.

    q ``[B, T, H, D]``, k ``[B, T, Hk, D]``, v ``[B, T, Hk, Dv]`` (GQA: query head h reads kv
    head ``h // (H // Hk)``); ``kq_kernel [H, c_q, c_k]`` (``kq_kernel[h, i', c_k // 2 + j']`` is
    theta_{i', j'}); ``head_kernel [H // c_h, c_h, c_h]`` or None (no head mixing).
    ``causal=False``: no masks, the same kernel, zero padding at both ends (no state).
    State: ``(k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv], q_cache [B, c_q - 1, H, D])``; the
    new queries sit at positions ``S .. S + T - 1``. Returns ``o [B, T, H, Dv]`` and, with
    ``output_final_state``, the state after the T tokens.
    """
    op = "naive_multi_token_attention"
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    c_q, c_k, _ = check_kernels(op, kq_kernel, head_kernel, H, q)
    causal = check_bidirectional(op, causal, initial_state, output_final_state)
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

    group = H // Hk
    k_h = k_all.repeat_interleave(group, dim=2)  # [B, L, H, D]
    v_h = v_all.repeat_interleave(group, dim=2)  # [B, L, H, Dv]
    z = scale * torch.einsum("brhd,bjhd->bhrj", q_ext, k_h)  # [B, H, R, L] logits A-hat
    row_pos = S - (c_q - 1) + torch.arange(R, device=q.device)
    key_pos = torch.arange(L, device=q.device)
    if causal:
        z = z.masked_fill(key_pos[None, :] > row_pos[:, None], 0.0)  # Mask_0

    # Conv2d_theta: logits[i, j] = sum_{i'=0}^{c_q-1} sum_{j'} theta[i', j'] z[i - i', j - j']
    logits = z.new_zeros(B, H, T, L)
    for di in range(c_q):
        rows = z[:, :, c_q - 1 - di : c_q - 1 - di + T]  # logits of queries i - i', i = 0..T-1
        for b in range(c_k):
            dj = b - c_k // 2  # j' in -floor(c_k/2) .. ceil(c_k/2) - 1
            logits = logits + kq_kernel[:, di, b, None, None] * _shift_keys(rows, dj)
    if causal:
        q_pos = S + torch.arange(T, device=q.device)
        logits = logits.masked_fill(key_pos[None, :] > q_pos[:, None], float("-inf"))  # Mask_-inf
    a = torch.softmax(logits, dim=-1)  # [B, H, T, L]

    if head_kernel is not None:  # A_new^{g c_h + m} = sum_n w[g, m, n] A^{g c_h + n}
        c_h = head_kernel.shape[1]
        mixed = [
            sum(head_kernel[h // c_h, h % c_h, n] * a[:, (h // c_h) * c_h + n] for n in range(c_h))
            for h in range(H)
        ]
        a = torch.stack(mixed, dim=1)
    o = torch.einsum("bhij,bjhd->bihd", a, v_h)  # [B, T, H, Dv]

    final = None
    if output_final_state:
        final = (k_all, v_all, q_ext[:, R - (c_q - 1):])
    return o, final


__all__ = ["naive_multi_token_attention"]

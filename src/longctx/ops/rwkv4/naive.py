"""RWKV-4's WKV operator from its definition (Peng et al. 2023, "RWKV: Reinventing RNNs for the
Transformer Era", the WKV operator of the time-mixing block):

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
            / (sum_{i<t} e^{-(t-1-i) w + k_i} + e^{u + k_t})

per channel: ``k, v [B, T, C]``, decay ``w [C] > 0``, bonus ``u [C]``. O(T^2 C); float64 in tests.
A state ``(a, b, p)`` stands for the sums over earlier tokens ``a e^p`` and ``b e^p`` (see
``recurrent.py``); it enters as the token ``i = -1`` of the sums, one step before the first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.rwkv4.state import WKVState, check_wkv, compute_dtype


def naive_wkv(k: Tensor, v: Tensor, w: Tensor, u: Tensor, initial_state: WKVState | None = None,
              output_final_state: bool = False) -> tuple[Tensor, WKVState | None]:
    """The O(T^2) sums of the definition. ``k, v [B, T, C]``, ``w [C] > 0``, ``u [C]``,
    ``initial_state (a, b, p)`` of ``[B, C]`` or None. Returns ``wkv [B, T, C]`` and, with
    ``output_final_state``, the sums over all tokens as ``(a, b, p = 0)`` (unscaled: exact in
    float64, may overflow in float32 for large k; the other forms keep ``p`` the running max)."""
    _, T, _ = check_wkv("naive_wkv", k, v, w, u, initial_state)
    in_dtype, dtype = k.dtype, compute_dtype(k.dtype)
    k, v, w, u = (x.to(dtype) for x in (k, v, w, u))
    if initial_state is not None:
        initial_state = tuple(s.to(dtype) for s in initial_state)
    t = torch.arange(T, device=k.device)
    dist = (t[:, None] - 1 - t[None, :]).to(k.dtype)  # t - 1 - i
    logit = -dist[:, :, None] * w + k[:, None, :, :]  # [B, T(t), T(i), C]
    past = (t[None, :] < t[:, None])[None, :, :, None]
    weight = torch.where(past, torch.exp(logit), torch.zeros((), dtype=k.dtype, device=k.device))
    num = (weight * v[:, None]).sum(2) + torch.exp(u + k) * v
    den = weight.sum(2) + torch.exp(u + k)
    if initial_state is not None:  # sum over the earlier stream: e^{-t w} (a, b) e^p
        a, b, p = initial_state
        decay = torch.exp(-t[:, None].to(k.dtype) * w + p[:, None])  # [B, T, C]
        num, den = num + decay * a[:, None], den + decay * b[:, None]
    out = (num / den).to(in_dtype)
    final = None
    if output_final_state:
        tail = torch.exp(-(T - 1 - t)[:, None].to(k.dtype) * w + k)  # [B, T, C]
        a_sum, b_sum = (tail * v).sum(1), tail.sum(1)
        if initial_state is not None:
            a0, b0, p0 = initial_state
            carry = torch.exp(-T * w + p0)
            a_sum, b_sum = a_sum + carry * a0, b_sum + carry * b0
        final = (a_sum, b_sum, torch.zeros_like(a_sum))
    return out, final

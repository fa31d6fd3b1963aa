"""Longformer attention, the definition as masked softmaxes (Beltagy et al. 2020, "Longformer",
§3.1): sliding-window attention plus global attention on pre-selected positions. A global token
attends to every token and every token attends to it; the global rows use their own projections
``Q_g, K_g, V_g`` (§3.1, "Linear Projections for Global Attention"), the rest ``Q_s, K_s, V_s``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import default_scale
from longctx.ops.longformer_attention.common import (
    LongformerState,
    check_global_positions,
    check_in_sequence,
    check_inputs,
    check_longformer_state,
    empty_state,
    seen_only,
    write_positions,
)
from longctx.ops.sliding_window_attention.state import past_to_ring, ring_to_past


def _attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float) -> Tensor:
    """softmax over the allowed keys: q ``[B, T, H, D]``, k ``[B, S, Hk, D]``, v ``[B, S, Hk, Dv]``,
    ``allowed [T, S]`` -> ``[B, T, H, Dv]``. Every row must allow at least one key."""
    group = q.shape[2] // k.shape[2]
    k_h = k.repeat_interleave(group, dim=2)  # [B, S, H, D]
    v_h = v.repeat_interleave(group, dim=2)  # [B, S, H, Dv]
    scores = scale * torch.einsum("bthd,bshd->bhts", q, k_h)  # [B, H, T, S]
    p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("bhts,bshd->bthd", p, v_h)


def naive_longformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_g: Tensor,
    k_g: Tensor,
    v_g: Tensor,
    window: int,
    global_positions: tuple[int, ...] | Tensor,
    causal: bool = True,
    scale: float | None = None,
    initial_state: LongformerState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, LongformerState | None]:
    """Sliding window + global attention with one masked softmax per row kind.

    q, q_g ``[B, T, H, D]``; k, k_g ``[B, T, Hk, D]``; v, v_g ``[B, T, Hk, Dv]`` (GQA as in
    softmax_attention). Query at absolute position t:

    - not global: projections q, k, v; keys j with ``t - window < j <= t`` (causal) or
      ``|t - j| < window`` (bidirectional), plus every global position j (causal: ``j <= t``);
    - global: projections q_g, k_g, v_g; every key j (causal: ``j <= t``).

    ``global_positions`` are absolute positions (from the start of the stream). Causal: positions
    not reached yet are simply future tokens; bidirectional: each must be < T. State (causal only):
    see ``longformer_attention/common.py``. Returns ``(o [B, T, H, Dv], final_state)``.
    """
    op = "naive_longformer_attention"
    B, T, _, Hk, D, Dv, w = check_inputs(op, q, k, v, q_g, k_g, v_g, window, causal,
                                         initial_state, output_final_state)
    G = check_global_positions(op, global_positions)
    scale = default_scale(scale, D)
    dev = q.device
    G_t = torch.tensor(G, dtype=torch.int64, device=dev)
    if not causal:
        check_in_sequence(op, G, T)
        t, j = torch.arange(T, device=dev)[:, None], torch.arange(T, device=dev)[None, :]
        local = ((t - j).abs() < w) | torch.isin(j, G_t)  # [T, T]
        o_loc = _attend(q, k, v, local, scale)
        o_glob = _attend(q_g, k_g, v_g, torch.ones_like(local), scale)
        is_global = torch.isin(torch.arange(T, device=dev), G_t)[None, :, None, None]
        return torch.where(is_global, o_glob, o_loc), None

    state = check_longformer_state(op, initial_state, B, w, G, Hk, D, Dv, q)
    if state is None:
        state = empty_state(B, w, G, Hk, D, Dv, q)
    k_buf, v_buf, gk, gv, pk, pv, n = state
    k_past, v_past, past_valid = ring_to_past(k_buf, v_buf, n)  # positions n - w .. n - 1
    P1 = pk.shape[1]
    pos_p = torch.arange(P1, device=dev)
    gk, gv = seen_only(gk, G_t, n), seen_only(gv, G_t, n)
    pk, pv = seen_only(pk, pos_p, n), seen_only(pv, pos_p, n)
    t = (n + torch.arange(T, device=dev))[:, None]  # query positions [T, 1]

    # Local rows: one key list = [global keys from the state | the last w keys | the new keys].
    pos_a, pos_b = G_t, n - w + torch.arange(w, device=dev)
    pos_c = n + torch.arange(T, device=dev)
    allow_a = (pos_a < n)[None, :] & (pos_a[None, :] <= t - w)  # seen, outside the window
    allow_b = past_valid[None, :] & (pos_b[None, :] > t - w)  # inside the window
    in_window_c = (pos_c[None, :] > t - w) | torch.isin(pos_c, G_t)[None, :]
    allow_c = (pos_c[None, :] <= t) & in_window_c  # window or global, not after t
    o_loc = _attend(q, torch.cat([gk, k_past, k], 1), torch.cat([gv, v_past, v], 1),
                    torch.cat([allow_a, allow_b, allow_c], 1), scale)

    # Global rows: [K_g of positions 0 .. max(G) from the state | K_g of the new tokens], j <= t.
    allow_p = (pos_p < n)[None, :] & (pos_p[None, :] <= t)
    allow_new = pos_c[None, :] <= t
    o_glob = _attend(q_g, torch.cat([pk, k_g], 1), torch.cat([pv, v_g], 1),
                     torch.cat([allow_p, allow_new], 1), scale)
    is_global = torch.isin(pos_c, G_t)[None, :, None, None]
    o = torch.where(is_global, o_glob, o_loc)  # [B, T, H, Dv]

    final = None
    if output_final_state:
        k_all, v_all = torch.cat([k_past, k], 1), torch.cat([v_past, v], 1)
        ring = past_to_ring(k_all[:, T:], v_all[:, T:], n + T)
        final = (*ring[:2], write_positions(gk, G_t, k, n), write_positions(gv, G_t, v, n),
                 write_positions(pk, pos_p, k_g, n), write_positions(pv, pos_p, v_g, n), n + T)
    return o, final


__all__ = ["naive_longformer_attention"]

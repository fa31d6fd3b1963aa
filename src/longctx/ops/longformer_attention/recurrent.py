"""Causal Longformer attention, decode form. Per step the state keeps (see ``common.py``): a ring
buffer of the last ``window`` local keys/values, the local keys/values at the global positions
seen so far, and the global-projection keys/values ``K_g, V_g`` of positions ``0 .. max(G)``, all a
later global query can attend to. So decode memory is ``window + |G| + max(G) + 1`` tokens,
whatever the stream length. No host sync: whether this token is a global query is a tensor test.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_step_qkv, default_scale
from longctx.ops.longformer_attention.common import (
    LongformerState,
    check_global_positions,
    check_inputs,
    check_longformer_state,
    empty_state,
    write_positions,
)


def _softmax_attend(q_t: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float) -> Tensor:
    """q_t ``[B, H, D]`` over keys ``k [B, S, Hk, D]`` where ``allowed [S]`` -> ``[B, H, Dv]``."""
    B, H, D = q_t.shape
    Hk = k.shape[2]
    s = scale * torch.einsum("bhgd,bshd->bhgs", q_t.reshape(B, Hk, H // Hk, D), k)  # [B,Hk,G,S]
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("bhgs,bshd->bhgd", p, v).reshape(B, H, -1)


def _step(q_t, k_t, v_t, qg_t, kg_t, vg_t, state, G_t: Tensor, scale: float):
    """Unchecked step; shapes as in ``longformer_attention_step``."""
    k_buf, v_buf, gk, gv, pk, pv, n = state
    w = k_buf.shape[1]
    slots = torch.arange(w, device=q_t.device)
    write = (slots == n % w)[None, :, None, None]  # this token goes to slot n mod w
    slot_pos = n - (n - slots) % w  # the position each slot holds after the write (< 0: empty)
    filled = slot_pos >= 0
    keep = filled[None, :, None, None]
    k_buf = torch.where(keep, torch.where(write, k_t[:, None], k_buf), 0.0)  # [B, w, Hk, D]
    v_buf = torch.where(keep, torch.where(write, v_t[:, None], v_buf), 0.0)
    gk, gv = write_positions(gk, G_t, k_t[:, None], n), write_positions(gv, G_t, v_t[:, None], n)
    pos_p = torch.arange(pk.shape[1], device=q_t.device)
    pk, pv = write_positions(pk, pos_p, kg_t[:, None], n), write_positions(pv, pos_p, vg_t[:, None], n)

    # local query: the window plus the global keys seen so far that lie before the window
    allowed = torch.cat([filled, G_t <= n - w])
    o_loc = _softmax_attend(q_t, torch.cat([k_buf, gk], 1), torch.cat([v_buf, gv], 1), allowed, scale)
    o_t = o_loc
    if pk.shape[1] > 0:  # global query (n is a global position): K_g, V_g of positions <= n
        o_glob = _softmax_attend(qg_t, pk, pv, pos_p <= n, scale)
        o_t = torch.where((G_t == n).any(), o_glob, o_loc)
    return o_t, (k_buf, v_buf, gk, gv, pk, pv, n + 1)


def longformer_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    qg_t: Tensor,
    kg_t: Tensor,
    vg_t: Tensor,
    state: LongformerState | None,
    window: int,
    global_positions: tuple[int, ...] | Tensor,
    scale: float | None = None,
) -> tuple[Tensor, LongformerState]:
    """One causal decode step: q_t, qg_t ``[B, H, D]``, k_t, kg_t ``[B, Hk, D]``, v_t, vg_t
    ``[B, Hk, Dv]`` (local and global projections of the new token). ``state`` as in
    ``longformer_attention/common.py`` or ``None`` (empty). Returns ``o_t [B, H, Dv]`` and the new
    state (new tensors; the input is not modified)."""
    op = "longformer_attention_step"
    check_step_qkv(op, q_t, k_t, v_t, allow_gqa=True)
    check_step_qkv(op, qg_t, kg_t, vg_t, allow_gqa=True)
    B, _, _, Hk, D, Dv, w = check_inputs(op, q_t[:, None], k_t[:, None], v_t[:, None],
                                         qg_t[:, None], kg_t[:, None], vg_t[:, None], window,
                                         True, state, False)
    G = check_global_positions(op, global_positions)
    state = check_longformer_state(op, state, B, w, G, Hk, D, Dv, q_t)
    if state is None:
        state = empty_state(B, w, G, Hk, D, Dv, q_t)
    G_t = torch.tensor(G, dtype=torch.int64, device=q_t.device)
    return _step(q_t, k_t, v_t, qg_t, kg_t, vg_t, state, G_t, default_scale(scale, D))


def recurrent_longformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_g: Tensor,
    k_g: Tensor,
    v_g: Tensor,
    window: int,
    global_positions: tuple[int, ...] | Tensor,
    scale: float | None = None,
    initial_state: LongformerState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, LongformerState | None]:
    """Causal Longformer attention by looping ``longformer_attention_step`` over the T tokens.

    Arguments, state and result as in ``naive_longformer_attention`` (causal only).
    """
    op = "recurrent_longformer_attention"
    B, T, H, Hk, D, Dv, w = check_inputs(op, q, k, v, q_g, k_g, v_g, window, True,
                                         initial_state, output_final_state)
    G = check_global_positions(op, global_positions)
    scale = default_scale(scale, D)
    state = check_longformer_state(op, initial_state, B, w, G, Hk, D, Dv, q)
    if state is None:
        state = empty_state(B, w, G, Hk, D, Dv, q)
    G_t = torch.tensor(G, dtype=torch.int64, device=q.device)
    outs = []
    for t in range(T):
        o_t, state = _step(q[:, t], k[:, t], v[:, t], q_g[:, t], k_g[:, t], v_g[:, t], state,
                           G_t, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, Dv)  # [B, T, H, Dv]
    return o, (state if output_final_state else None)


__all__ = ["longformer_attention_step", "recurrent_longformer_attention"]

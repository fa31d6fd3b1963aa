"""The sliding-window state: a ring buffer ``(k_buf [B, w, Hk, D], v_buf [B, w, Hk, Dv], n_seen)``.

``n_seen`` is an int64 0-dim tensor, the number of tokens seen so far; the token at absolute
position p lives in slot ``p % w``. Slots not yet written (``n_seen < w``) hold zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_state

RingState = tuple[Tensor, Tensor, Tensor]


def empty_ring(B: int, window: int, Hk: int, D: int, Dv: int, like: Tensor) -> RingState:
    """The state before any token: zero buffers and ``n_seen = 0``."""
    return (
        like.new_zeros(B, window, Hk, D),
        like.new_zeros(B, window, Hk, Dv),
        torch.zeros((), dtype=torch.int64, device=like.device),
    )


def check_ring_state(
    op: str, state: object, B: int, window: int, Hk: int, D: int, Dv: int, like: Tensor
) -> RingState | None:
    """Validate ``(k_buf [B, w, Hk, D], v_buf [B, w, Hk, Dv], n_seen int64 [])`` or ``None``."""
    if state is None:
        return None
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise TypeError(
            f"{op}: state must be a tuple (k_buf [B, w, Hk, D], v_buf [B, w, Hk, Dv], n_seen), "
            f"got {type(state).__name__}"
            + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
        )
    k_buf, v_buf, n_seen = state
    for name, t in (("k_buf", k_buf), ("v_buf", v_buf)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: state {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 4 and t.shape[1] != window:
            raise ValueError(
                f"{op}: state {name} is a ring buffer of {t.shape[1]} slots but window={window}; "
                f"expected shape [{B}, {window}, {Hk}, {D if name == 'k_buf' else Dv}]"
            )
    check_state(op, "state k_buf", k_buf, (B, window, Hk, D))
    check_state(op, "state v_buf", v_buf, (B, window, Hk, Dv))
    for name, t in (("k_buf", k_buf), ("v_buf", v_buf)):
        if t.dtype != like.dtype:
            raise TypeError(f"{op}: state {name} must have q's dtype {like.dtype}, got {t.dtype}")
        if t.device != like.device:
            raise ValueError(
                f"{op}: state {name} must be on q's device {like.device}, got {t.device}"
            )
    if not isinstance(n_seen, Tensor) or n_seen.dim() != 0 or n_seen.dtype != torch.int64:
        what = (
            f"shape {list(n_seen.shape)}, dtype {n_seen.dtype}"
            if isinstance(n_seen, Tensor)
            else type(n_seen).__name__
        )
        raise TypeError(f"{op}: state n_seen must be an int64 0-dim tensor, got {what}")
    if n_seen.device != like.device:
        raise ValueError(
            f"{op}: state n_seen must be on q's device {like.device}, got {n_seen.device}"
        )
    return k_buf, v_buf, n_seen


def ring_to_past(k_buf: Tensor, v_buf: Tensor, n_seen: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unroll the ring into the last w tokens in time order.

    Returns ``k_past [B, w, Hk, D]``, ``v_past [B, w, Hk, Dv]`` (row i = position
    ``n_seen - w + i``) and ``valid [w]`` (False for positions < 0, which are zeroed).
    """
    w = k_buf.shape[1]
    i = torch.arange(w, device=k_buf.device)
    slots = (n_seen + i) % w  # slot of position n_seen - w + i
    valid = i >= w - n_seen
    keep = valid[None, :, None, None]
    k_past = torch.where(keep, k_buf.index_select(1, slots), 0.0)
    v_past = torch.where(keep, v_buf.index_select(1, slots), 0.0)
    return k_past, v_past, valid


def past_to_ring(k_last: Tensor, v_last: Tensor, n_seen: Tensor) -> RingState:
    """Roll the last w tokens (row i = position ``n_seen - w + i``) back into ring slots.

    Rows at negative positions (fewer than w tokens seen) become zero slots.
    """
    w = k_last.shape[1]
    s = torch.arange(w, device=k_last.device)
    rows = (s - n_seen) % w  # slot s holds the position p = n_seen - w + row with p % w == s
    valid = (rows >= w - n_seen)[None, :, None, None]
    k_buf = torch.where(valid, k_last.index_select(1, rows), 0.0)
    v_buf = torch.where(valid, v_last.index_select(1, rows), 0.0)
    return k_buf, v_buf, n_seen

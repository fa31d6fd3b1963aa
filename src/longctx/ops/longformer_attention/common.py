"""What the Longformer-attention forms share: the global-position and input checks and the state.

The state (causal form only) is a tuple of seven tensors, ``G = sorted(global_positions)``,
``P1 = max(G) + 1`` (0 without global positions):

- ``k_buf [B, w, Hk, D], v_buf [B, w, Hk, Dv]``: ring buffer of the last ``window`` local keys
  (position p in slot ``p mod w``), as in ``sliding_window_attention``;
- ``gk [B, |G|, Hk, D], gv [B, |G|, Hk, Dv]``: the local-projection keys/values at the global
  positions (slot j = position ``G[j]``), which every later token attends to;
- ``pk [B, P1, Hk, D], pv [B, P1, Hk, Dv]``: the global-projection keys/values ``K_g, V_g`` of
  positions ``0 .. max(G)``, which the global queries attend to (dead once ``n_seen > max(G)``);
- ``n_seen`` int64 0-dim: tokens seen so far.

Slots not yet written hold zeros in every state returned, and are never read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from longctx.ops.common.checks import (
    check_bidirectional,
    check_positive_int,
    check_qkv,
    check_state,
)

LongformerState = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_FIELDS = ("k_buf", "v_buf", "gk", "gv", "pk", "pv")


def check_global_positions(op: str, global_positions: object) -> tuple[int, ...]:
    """``global_positions`` (ints, or a 1-D integer tensor) as a sorted tuple of distinct ints >= 0."""
    if isinstance(global_positions, Tensor):
        if global_positions.dim() != 1 or global_positions.is_floating_point() or \
                global_positions.dtype == torch.bool:
            raise ValueError(
                f"{op}: global_positions must be a 1-D integer tensor or a tuple of ints, got a "
                f"tensor of shape {list(global_positions.shape)} and dtype {global_positions.dtype}"
            )
        global_positions = tuple(int(p) for p in global_positions.tolist())
    if not isinstance(global_positions, Sequence) or isinstance(global_positions, str) or any(
        isinstance(p, bool) or not isinstance(p, int) for p in global_positions
    ):
        raise ValueError(
            f"{op}: global_positions must be a tuple of ints (token positions), got {global_positions!r}"
        )
    negative = sorted(p for p in global_positions if p < 0)
    if negative:
        raise ValueError(f"{op}: global_positions must be >= 0; got negative positions {negative}")
    dupes = sorted({p for p in global_positions if list(global_positions).count(p) > 1})
    if dupes:
        raise ValueError(f"{op}: global_positions must be distinct; {dupes} appear more than once")
    return tuple(sorted(global_positions))


def check_in_sequence(op: str, G: tuple[int, ...], T: int) -> None:
    """Bidirectional form: every global position must be a token of the sequence."""
    out = [p for p in G if p >= T]
    if out:
        raise ValueError(
            f"{op}: global_positions {out} are out of range for a sequence of length T={T} "
            f"(the bidirectional form needs 0 <= position < T)"
        )


def check_inputs(op: str, q, k, v, q_g, k_g, v_g, window, causal, initial_state, output_final_state):
    """Validate the six projections and the options; return ``(B, T, H, Hk, D, Dv, w)``."""
    B, T, H, Hk, D, Dv = check_qkv(op, q, k, v, allow_gqa=True)
    check_qkv(op, q_g, k_g, v_g, allow_gqa=True)
    for name, t, ref in (("q_g", q_g, q), ("k_g", k_g, k), ("v_g", v_g, v)):
        if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
            raise ValueError(
                f"{op}: {name} (global projection) must match {name[0]} in shape, dtype and device; "
                f"got {list(t.shape)} {t.dtype} vs {list(ref.shape)} {ref.dtype}"
            )
    w = check_positive_int("window", window)
    check_bidirectional(op, causal, initial_state, output_final_state)
    return B, T, H, Hk, D, Dv, w


def empty_state(B: int, w: int, G: tuple[int, ...], Hk: int, D: int, Dv: int,
                like: Tensor) -> LongformerState:
    """The state before any token: zero buffers, ``n_seen = 0``."""
    nG, P1 = len(G), (max(G) + 1 if G else 0)
    z = like.new_zeros
    return (z(B, w, Hk, D), z(B, w, Hk, Dv), z(B, nG, Hk, D), z(B, nG, Hk, Dv),
            z(B, P1, Hk, D), z(B, P1, Hk, Dv), torch.zeros((), dtype=torch.int64, device=like.device))


def check_longformer_state(op: str, state: object, B: int, w: int, G: tuple[int, ...], Hk: int,
                           D: int, Dv: int, like: Tensor) -> LongformerState | None:
    """Validate the seven-tensor state (see the module docstring) or ``None``."""
    if state is None:
        return None
    if not isinstance(state, (tuple, list)) or len(state) != 7:
        raise TypeError(
            f"{op}: state must be a tuple (k_buf, v_buf, gk, gv, pk, pv, n_seen), got "
            f"{type(state).__name__}" + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
        )
    nG, P1 = len(G), (max(G) + 1 if G else 0)
    rows = {"k_buf": (w, "window"), "v_buf": (w, "window"), "gk": (nG, "len(global_positions)"),
            "gv": (nG, "len(global_positions)"), "pk": (P1, "max(global_positions) + 1"),
            "pv": (P1, "max(global_positions) + 1")}
    for name, t in zip(_FIELDS, state[:6]):
        n_rows, what = rows[name]
        last = D if name.endswith("k") or name == "k_buf" else Dv
        if isinstance(t, Tensor) and t.dim() == 4 and t.shape[1] != n_rows:
            raise ValueError(
                f"{op}: state {name} holds {t.shape[1]} rows but {what} = {n_rows}; was the state "
                "made with other window / global_positions?"
            )
        check_state(op, f"state {name}", t, (B, n_rows, Hk, last))
        if t.dtype != like.dtype:
            raise TypeError(f"{op}: state {name} must have q's dtype {like.dtype}, got {t.dtype}")
        if t.device != like.device:
            raise ValueError(f"{op}: state {name} must be on q's device {like.device}, got {t.device}")
    n_seen = state[6]
    if not isinstance(n_seen, Tensor) or n_seen.dim() != 0 or n_seen.dtype != torch.int64:
        what = (f"shape {list(n_seen.shape)}, dtype {n_seen.dtype}" if isinstance(n_seen, Tensor)
                else type(n_seen).__name__)
        raise TypeError(f"{op}: state n_seen must be an int64 0-dim tensor, got {what}")
    if n_seen.device != like.device:
        raise ValueError(f"{op}: state n_seen must be on q's device {like.device}, got {n_seen.device}")
    return tuple(state)


def write_positions(buf: Tensor, positions: Tensor, new: Tensor, n_seen: Tensor) -> Tensor:
    """Rows of ``buf [B, R, Hk, *]`` hold the tokens at ``positions [R]``. Return the buffer after
    the tokens ``new [B, T, Hk, *]`` at positions ``n_seen .. n_seen + T - 1``: a row keeps its
    value if its position was seen before, takes the new token if it is one of them, else is 0."""
    T = new.shape[1]
    old = (positions < n_seen)[None, :, None, None]
    fresh = ((positions >= n_seen) & (positions < n_seen + T))[None, :, None, None]
    if T == 0 or buf.shape[1] == 0:
        return torch.where(old, buf, 0.0)
    idx = (positions - n_seen).clamp(0, T - 1)
    return torch.where(old, buf, torch.where(fresh, new.index_select(1, idx), 0.0))


def seen_only(buf: Tensor, positions: Tensor, n_seen: Tensor) -> Tensor:
    """``buf [B, R, Hk, *]`` with the rows whose position is not yet seen set to 0 (a caller's
    garbage there is never read: 0 * NaN would still be NaN)."""
    return torch.where((positions < n_seen)[None, :, None, None], buf, 0.0)

"""The MTA decode state: a KV cache plus the last ``c_q - 1`` queries.

``(k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv], q_cache [B, c_q - 1, H, D])``: keys and values
of the S tokens seen so far, and the queries at positions ``S - (c_q - 1) .. S - 1`` (what the
query axis of the key-query convolution needs for the next tokens). Rows of ``q_cache`` at
negative positions (fewer than ``c_q - 1`` tokens seen) are zero in every state an op returns and
are ignored (replaced by zeros) on input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_state

MTAState = tuple[Tensor, Tensor, Tensor]


def empty_state(B: int, H: int, Hk: int, D: int, Dv: int, c_q: int, like: Tensor) -> MTAState:
    """The state before any token: an empty KV cache and ``c_q - 1`` zero query rows."""
    return (like.new_zeros(B, 0, Hk, D), like.new_zeros(B, 0, Hk, Dv),
            like.new_zeros(B, c_q - 1, H, D))


def check_mta_state(
    op: str, state: object, B: int, H: int, Hk: int, D: int, Dv: int, c_q: int, like: Tensor
) -> MTAState | None:
    """Validate ``(k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv], q_cache [B, c_q - 1, H, D])``."""
    if state is None:
        return None
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise TypeError(
            f"{op}: state must be a tuple (k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv], "
            f"q_cache [B, c_q - 1, H, D]), got {type(state).__name__}"
            + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
        )
    k_cache, v_cache, q_cache = state
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("q_cache", q_cache)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: state {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{op}: state {name} must have 4 dims, got shape {list(t.shape)}")
    if q_cache.shape[1] != c_q - 1:
        raise ValueError(
            f"{op}: state q_cache holds {q_cache.shape[1]} past queries but kq_kernel has "
            f"c_q={c_q}; expected shape [{B}, {c_q - 1}, {H}, {D}]"
        )
    S = k_cache.shape[1]
    check_state(op, "state k_cache", k_cache, (B, S, Hk, D))
    check_state(op, "state v_cache", v_cache, (B, S, Hk, Dv))
    check_state(op, "state q_cache", q_cache, (B, c_q - 1, H, D))
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("q_cache", q_cache)):
        if t.dtype != like.dtype:
            raise TypeError(f"{op}: state {name} must have q's dtype {like.dtype}, got {t.dtype}")
        if t.device != like.device:
            raise ValueError(f"{op}: state {name} must be on q's device {like.device}, got {t.device}")
    return k_cache, v_cache, q_cache


def past_queries(q_cache: Tensor, S: int) -> Tensor:
    """``q_cache`` with the rows at negative positions (row r is position ``S - len + r``) zeroed."""
    n = q_cache.shape[1]
    valid = torch.arange(n, device=q_cache.device) >= n - S  # position S - n + r >= 0
    return torch.where(valid[None, :, None, None], q_cache, 0.0)

"""The softmax-attention state: a KV cache ``(k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv])``."""

from __future__ import annotations

from torch import Tensor

from longctx.ops.common.checks import check_state

KVCache = tuple[Tensor, Tensor]


def check_kv_cache(
    op: str, state: object, B: int, Hk: int, D: int, Dv: int, like: Tensor
) -> KVCache | None:
    """Validate a KV cache ``(k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv])`` (or ``None``)."""
    if state is None:
        return None
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(
            f"{op}: initial_state must be a tuple (k_cache [B, S, Hk, D], v_cache [B, S, Hk, Dv]), "
            f"got {type(state).__name__}"
            + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
        )
    k_cache, v_cache = state
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{op}: initial_state {name} must be a torch.Tensor, got {type(t).__name__}"
            )
        if t.dim() != 4:
            raise ValueError(
                f"{op}: initial_state {name} must have 4 dims [B, S, Hk, D], "
                f"got shape {list(t.shape)}"
            )
    S = k_cache.shape[1]
    check_state(op, "initial_state k_cache", k_cache, (B, S, Hk, D))
    check_state(op, "initial_state v_cache", v_cache, (B, S, Hk, Dv))
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != like.dtype:
            raise TypeError(
                f"{op}: initial_state {name} must have q's dtype {like.dtype}, got {t.dtype}"
            )
        if t.device != like.device:
            raise ValueError(
                f"{op}: initial_state {name} must be on q's device {like.device}, got {t.device}"
            )
    return k_cache, v_cache

"""The landmark-attention state: every past key/value, stored block by block, plus one landmark
key per complete block.

    state = (k_blocks   [B, N, block_size, Hk, D],   the N complete blocks' keys
             v_blocks   [B, N, block_size, Hk, Dv],  ... and values
             k_landmark [B, N, Hk, D],               one landmark key per complete block
             k_tail     [B, r, Hk, D],               the r < block_size tokens of the open block
             v_tail     [B, r, Hk, Dv])

The state has seen ``S = N * block_size + r`` tokens (read from the shapes: no counter, no host
sync). Complete blocks are kept apart from the open block so that a decode step appends to the
short tail and copies the block store only once per ``block_size`` tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_state

LandmarkCache = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
_NAMES = ("k_blocks", "v_blocks", "k_landmark", "k_tail", "v_tail")


def empty_cache(B: int, block_size: int, Hk: int, D: int, Dv: int, like: Tensor) -> LandmarkCache:
    """The state before any token: N = 0 blocks, an empty tail."""
    return (
        like.new_zeros(B, 0, block_size, Hk, D),
        like.new_zeros(B, 0, block_size, Hk, Dv),
        like.new_zeros(B, 0, Hk, D),
        like.new_zeros(B, 0, Hk, D),
        like.new_zeros(B, 0, Hk, Dv),
    )


def check_landmark_cache(
    op: str, state: object, B: int, block_size: int, Hk: int, D: int, Dv: int, like: Tensor
) -> LandmarkCache | None:
    """Validate a state (see the module docstring) or ``None``; return it as a tuple."""
    if state is None:
        return None
    if not isinstance(state, (tuple, list)) or len(state) != 5:
        raise TypeError(
            f"{op}: state must be a tuple (k_blocks, v_blocks, k_landmark, k_tail, v_tail), got "
            f"{type(state).__name__}"
            + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
        )
    for name, t in zip(_NAMES, state):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: state {name} must be a torch.Tensor, got {type(t).__name__}")
    k_blocks, v_blocks, k_landmark, k_tail, v_tail = state
    if k_blocks.dim() != 5:
        raise ValueError(f"{op}: state k_blocks must have 5 dims [B, N, block_size, Hk, D], "
                         f"got shape {list(k_blocks.shape)}")
    if k_blocks.shape[2] != block_size:
        raise ValueError(f"{op}: state holds blocks of {k_blocks.shape[2]} tokens but "
                         f"block_size={block_size}")
    if k_tail.dim() != 4:
        raise ValueError(f"{op}: state k_tail must have 4 dims [B, r, Hk, D], "
                         f"got shape {list(k_tail.shape)}")
    N, r = k_blocks.shape[1], k_tail.shape[1]
    if r >= block_size:
        raise ValueError(f"{op}: state k_tail holds {r} tokens; the open block has fewer than "
                         f"block_size={block_size} (a full block belongs in k_blocks)")
    check_state(op, "state k_blocks", k_blocks, (B, N, block_size, Hk, D))
    check_state(op, "state v_blocks", v_blocks, (B, N, block_size, Hk, Dv))
    check_state(op, "state k_landmark", k_landmark, (B, N, Hk, D))
    check_state(op, "state k_tail", k_tail, (B, r, Hk, D))
    check_state(op, "state v_tail", v_tail, (B, r, Hk, Dv))
    for name, t in zip(_NAMES, state):
        if t.dtype != like.dtype:
            raise TypeError(f"{op}: state {name} must have q's dtype {like.dtype}, got {t.dtype}")
        if t.device != like.device:
            raise ValueError(f"{op}: state {name} must be on q's device {like.device}, "
                             f"got {t.device}")
    return k_blocks, v_blocks, k_landmark, k_tail, v_tail


def cache_length(state: LandmarkCache | None) -> int:
    """Tokens seen: ``N * block_size + r``."""
    if state is None:
        return 0
    return state[0].shape[1] * state[0].shape[2] + state[3].shape[1]


def n_new_landmarks(seen: int, T: int, block_size: int) -> int:
    """Blocks that a call of T tokens after ``seen`` tokens completes (one landmark each)."""
    return (seen + T) // block_size - seen // block_size


def check_landmarks(op: str, k_landmark: object, B: int, seen: int, T: int, block_size: int,
                    Hk: int, D: int, like: Tensor) -> None:
    """``k_landmark [B, n, Hk, D]``: one key per block completed by this call, in order."""
    n = n_new_landmarks(seen, T, block_size)
    if not isinstance(k_landmark, Tensor):
        raise TypeError(f"{op}: k_landmark must be a torch.Tensor, got {type(k_landmark).__name__}")
    if tuple(k_landmark.shape) != (B, n, Hk, D):
        raise ValueError(
            f"{op}: k_landmark must have shape [{B}, {n}, {Hk}, {D}] (one key per block completed "
            f"by this call: {seen} tokens seen + T={T} new, block_size={block_size}), "
            f"got {list(k_landmark.shape)}"
        )
    if k_landmark.dtype != like.dtype:
        raise TypeError(f"{op}: k_landmark must have q's dtype {like.dtype}, "
                        f"got {k_landmark.dtype}")
    if k_landmark.device != like.device:
        raise ValueError(f"{op}: k_landmark must be on q's device {like.device}, "
                         f"got {k_landmark.device}")


def join_cache(
    state: LandmarkCache | None, k: Tensor, v: Tensor, k_landmark: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """All keys/values in time order and all landmark keys: the past (if any) then the new ones.

    Returns ``k_all [B, S+T, Hk, D]``, ``v_all [B, S+T, Hk, Dv]``, ``kl_all [B, N', Hk, D]``
    with ``N' = (S + T) // block_size``.
    """
    if state is None:
        return k, v, k_landmark
    k_blocks, v_blocks, kl, k_tail, v_tail = state
    B, N, bs = k_blocks.shape[:3]
    k_all = torch.cat([k_blocks.reshape(B, N * bs, *k_blocks.shape[3:]), k_tail, k], dim=1)
    v_all = torch.cat([v_blocks.reshape(B, N * bs, *v_blocks.shape[3:]), v_tail, v], dim=1)
    return k_all, v_all, torch.cat([kl, k_landmark], dim=1)


def split_cache(k_all: Tensor, v_all: Tensor, kl_all: Tensor, block_size: int) -> LandmarkCache:
    """The inverse of ``join_cache``: complete blocks, their landmarks, and the open tail."""
    B, L = k_all.shape[:2]
    N = L // block_size
    k_blocks = k_all[:, : N * block_size].reshape(B, N, block_size, *k_all.shape[2:])
    v_blocks = v_all[:, : N * block_size].reshape(B, N, block_size, *v_all.shape[2:])
    return k_blocks, v_blocks, kl_all, k_all[:, N * block_size :], v_all[:, N * block_size :]

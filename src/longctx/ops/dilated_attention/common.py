"""What the dilated-attention forms share: argument checks, the ring-buffer state, a masked
softmax that also returns its log-denominator, and the denominator-weighted mixing of the
different (segment length, dilation rate) outputs (Ding et al. 2023, "LongNet", §2.2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_positive_int, check_state

RingState = tuple[Tensor, Tensor, Tensor]  # (k_buf [B, W, Hk, D], v_buf [B, W, Hk, Dv], n_seen)


def check_segments(segment_lengths: object, dilation_rates: object) -> tuple[tuple[int, int], ...]:
    """Validate the paired ``segment_lengths`` w and ``dilation_rates`` r; return ``((w, r), ...)``.

    Each must be a non-empty tuple/list of positive ints of the same length, with ``r <= w``.
    ``w`` need not be a multiple of ``r`` (the segment is padded to one, see README.md).
    """
    pairs = []
    for name, values in (("segment_lengths", segment_lengths), ("dilation_rates", dilation_rates)):
        if not isinstance(values, (tuple, list)) or len(values) == 0:
            raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {values!r}")
        for x in values:
            check_positive_int(f"every entry of {name}", x)
    if len(segment_lengths) != len(dilation_rates):
        raise ValueError(
            f"segment_lengths and dilation_rates must have the same length (one rate per segment "
            f"length); got {len(segment_lengths)} segment lengths {tuple(segment_lengths)} and "
            f"{len(dilation_rates)} dilation rates {tuple(dilation_rates)}"
        )
    for w, r in zip(segment_lengths, dilation_rates):
        if r > w:
            raise ValueError(
                f"dilation rate {r} is larger than its segment length {w}: a dilated segment must "
                "keep at least every r-th row of w rows (need dilation_rates[i] <= segment_lengths[i])"
            )
        pairs.append((w, r))
    return tuple(pairs)


def empty_ring(B: int, W: int, Hk: int, D: int, Dv: int, like: Tensor) -> RingState:
    """The state before any token: zero buffers of ``W = max(segment_lengths)`` slots, n_seen 0."""
    return (
        like.new_zeros(B, W, Hk, D),
        like.new_zeros(B, W, Hk, Dv),
        torch.zeros((), dtype=torch.int64, device=like.device),
    )


def check_ring(
    op: str, state: object, B: int, W: int, Hk: int, D: int, Dv: int, like: Tensor
) -> RingState | None:
    """Validate ``(k_buf [B, W, Hk, D], v_buf [B, W, Hk, Dv], n_seen int64 [])`` or ``None``."""
    if state is None:
        return None
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise TypeError(
            f"{op}: state must be a tuple (k_buf [B, W, Hk, D], v_buf [B, W, Hk, Dv], n_seen) with "
            f"W = max(segment_lengths), got {type(state).__name__}"
            + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
        )
    k_buf, v_buf, n_seen = state
    for name, t, last in (("k_buf", k_buf, D), ("v_buf", v_buf, Dv)):
        if isinstance(t, Tensor) and t.dim() == 4 and t.shape[1] != W:
            raise ValueError(
                f"{op}: state {name} holds {t.shape[1]} slots but max(segment_lengths)={W}; "
                f"expected shape [{B}, {W}, {Hk}, {last}]"
            )
        check_state(op, f"state {name}", t, (B, W, Hk, last))
        if t.dtype != like.dtype:
            raise TypeError(f"{op}: state {name} must have q's dtype {like.dtype}, got {t.dtype}")
        if t.device != like.device:
            raise ValueError(f"{op}: state {name} must be on q's device {like.device}, got {t.device}")
    if not isinstance(n_seen, Tensor) or n_seen.dim() != 0 or n_seen.dtype != torch.int64:
        what = (f"shape {list(n_seen.shape)}, dtype {n_seen.dtype}" if isinstance(n_seen, Tensor)
                else type(n_seen).__name__)
        raise TypeError(f"{op}: state n_seen must be an int64 0-dim tensor, got {what}")
    if n_seen.device != like.device:
        raise ValueError(f"{op}: state n_seen must be on q's device {like.device}, got {n_seen.device}")
    return k_buf, v_buf, n_seen


def masked_attention(scores: Tensor, mask: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax attention over the keys where ``mask`` is True; rows with no key give zeros.

    ``scores [..., Q, K]``, ``mask`` broadcastable to it, ``v [..., K, Dv]``. Returns
    ``o [..., Q, Dv]`` and ``lse [..., Q]``, the log of the softmax denominator (−inf for an
    empty row). No NaN reaches the forward or the backward pass, even for empty rows.
    """
    s = scores.masked_fill(~mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True).detach()  # the row max only stabilises exp
    m = torch.where(torch.isfinite(m), m, 0.0)
    e = torch.exp(s - m)  # 0 where masked
    denom = e.sum(dim=-1, keepdim=True)
    has = denom > 0
    denom = torch.where(has, denom, 1.0)
    o = (e @ v) / denom
    lse = torch.where(has, m + torch.log(denom), float("-inf")).squeeze(-1)
    return o, lse


def mix_by_denominators(outs: list[Tensor], lses: list[Tensor]) -> Tensor:
    """LongNet §2.2: ``O = Σ_i α_i O_i`` with ``α_i = s_i / Σ_j s_j``, s_i the softmax denominator.

    ``outs[i] [..., Dv]`` and ``lses[i] [...]`` (``lse = log s``; −inf where the pattern does not
    cover the row, which then gets weight 0). A row no pattern covers is 0.
    """
    lse = torch.stack(lses, dim=0)  # [n, ...]
    top = lse.amax(dim=0, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, 0.0)
    s = torch.exp(lse - top)  # s_i up to a common factor; 0 for uncovered rows
    total = s.sum(dim=0)
    total = torch.where(total > 0, total, 1.0)
    o = sum(s[i][..., None] * outs[i] for i in range(len(outs)))
    return o / total[..., None]


def positions_mask(
    pos_q: Tensor, pos_k: Tensor, key_valid: Tensor, heads: Tensor, w: int, r: int, causal: bool
) -> Tensor:
    """``[H, Tq, Tk]`` bool: query at absolute position ``pos_q`` of head h sees the key at
    ``pos_k`` under the (w, r) pattern.

    LongNet §2.2–2.3: both lie in the same segment ``pos // w``; both are rows the head keeps,
    offset ``u = pos mod w`` with ``u ≡ h (mod r)`` (head h's offset is ``h mod r``); and, causal,
    the key is not after the query.
    """
    kept_q = (pos_q % w % r)[None, :] == (heads % r)[:, None]  # [H, Tq]
    kept_k = (pos_k % w % r)[None, :] == (heads % r)[:, None]  # [H, Tk]
    same = (pos_q // w)[:, None] == (pos_k // w)[None, :]  # [Tq, Tk]
    mask = same & key_valid[None, :]
    if causal:
        mask = mask & (pos_k[None, :] <= pos_q[:, None])
    return kept_q[:, :, None] & kept_k[:, None, :] & mask[None]

"""The Fenwick-tree partition of log-linear attention (Guo et al. 2025, §3.1), its state, checks.

For a query at position t (0-indexed) and a source s <= t:
    level(t, s) = 0 if s == t, else floor(log2(t XOR s)) + 1 = bit_length(t XOR s),
so level l >= 1 holds the 2^(l-1) tokens that agree with t above bit l-1 and have bit l-1 = 0
(non-empty iff bit l-1 of t is set). A query at t therefore reads bit_length(t) + 1 levels.

The decode state after t tokens (the next query is at position t) keeps the levels l >= 1 of that
next query: ``S [B, bit_length(t), H, Dk, Dv]`` with ``S[:, l-1]`` = level l, plus the counter t.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from longctx.ops.common.checks import _shape, check_chunk_size


class FenwickState(NamedTuple):
    """Log-linear decode state: the level states and the number of tokens already seen."""

    S: Tensor  # [B, bit_length(t), H, Dk, Dv]; S[:, l-1] is level l of the query at position t
    t: Tensor  # int64, 0-dim: tokens processed so far (= the next query's position)


def bit_length(x: Tensor) -> Tensor:
    """Elementwise ``int.bit_length`` of a non-negative integer tensor (exact below 2^53)."""
    return torch.frexp(x.to(torch.float64)).exponent.to(torch.int64)  # x = m 2^e, m in [0.5, 1)


def level_matrix(pos_q: Tensor, pos_s: Tensor) -> Tensor:
    """``level(t, s) = bit_length(t XOR s)`` for every pair: [len(pos_q), len(pos_s)] int64."""
    return bit_length(torch.bitwise_xor(pos_q[:, None], pos_s[None, :]))


def init_levels(pos_q: Tensor, t0: int, n_init: int) -> Tensor:
    """Level, seen from the queries ``pos_q >= t0``, of each level l = 1..n_init of a state taken
    at position t0: ``max(l, bit_length(t XOR t0))`` (a bucket of t0 either stays a bucket of t,
    or lies entirely inside the bucket of t that contains t0). Returns [len(pos_q), n_init]."""
    lv = torch.arange(1, n_init + 1, device=pos_q.device)
    return torch.maximum(lv[None, :], bit_length(torch.bitwise_xor(pos_q, t0))[:, None])


def required_levels(t_last: int) -> int:
    """Levels L a query at position ``t_last`` reads: floor(log2 t_last) + 2 (1 at t_last = 0)."""
    return t_last.bit_length() + 1


def trailing_ones(t: int) -> int:
    return (~t & (t + 1)).bit_length() - 1


def fenwick_advance(full: Tensor, t: int) -> Tensor:
    """Merge the levels after the query at ``t`` into the state of position t + 1.

    ``full``: [B, bit_length(t) + 1, H, Dk, Dv], levels 0..bit_length(t) of the query at t.
    With m = trailing ones of t, the bucket m+1 of t+1 is {t} ∪ buckets 1..m of t:
        S'^(m+1) = S^(0) + ... + S^(m) (+ S^(m+1), empty as bit m of t is 0: adding it keeps
        any state, even one with mass in empty levels, equal to the other forms' reading),
        S'^(1..m) = 0,  S'^(l) = S^(l) for l > m+1.
    Returns [B, bit_length(t + 1), H, Dk, Dv] (one level more when t + 1 is a power of two).
    """
    m = trailing_ones(t)
    B, _, H, Dk, Dv = full.shape
    merged = full[:, : m + 2].sum(dim=1, keepdim=True)
    zeros = full.new_zeros(B, m, H, Dk, Dv)
    return torch.cat([zeros, merged, full[:, m + 2 :]], dim=1)


def check_power_of_two(chunk_size: object) -> int:
    """A chunk size that is a power of two, so chunk boundaries are Fenwick bucket boundaries."""
    C = check_chunk_size(chunk_size)
    if C & (C - 1):
        raise ValueError(
            f"chunk_size must be a power of two (chunks must align with the Fenwick buckets), "
            f"got {C}"
        )
    return C


def check_lambda(
    op: str, name: str, lam: object, lead: tuple[int, ...], t_last: int | None
) -> None:
    """``lam [*lead, L]`` with L >= the levels the query at ``t_last`` reads (extra levels are
    unused); ``t_last = None`` when there is no query (empty sequence): any L >= 1."""
    if not isinstance(lam, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(lam).__name__}")
    if not lam.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {lam.dtype}")
    dims = "[B, T, H, L]" if len(lead) == 3 else "[B, H, L]"
    need = 1 if t_last is None else required_levels(t_last)
    if lam.dim() != len(lead) + 1 or tuple(lam.shape[:-1]) != tuple(lead):
        raise ValueError(
            f"{op}: {name} must have shape {dims} = [{', '.join(map(str, lead))}, L] with "
            f"L >= {need}, got {_shape(lam)}"
        )
    if lam.shape[-1] < need:
        raise ValueError(
            f"{op}: {name} has L = {lam.shape[-1]} levels, but the query at position t = {t_last} "
            f"reads levels 0..{need - 1}: {name} needs L >= {need} (= floor(log2 t) + 2)"
        )


def check_fenwick_state(
    op: str, name: str, state: object, B: int, H: int, Dk: int, Dv: int, dims: str = "Dk, Dv"
) -> tuple[Tensor, int]:
    """Validate a ``FenwickState`` (or a tuple ``(S, t)``); return ``(S, t)`` with t an int."""
    if not isinstance(state, tuple) or len(state) != 2:
        raise TypeError(
            f"{op}: {name} must be a FenwickState (S [B, L, H, {dims}], t int64) or a tuple "
            f"(S, t), got {type(state).__name__}"
        )
    S, t = state
    if isinstance(t, Tensor):
        if t.dim() != 0 or t.dtype != torch.int64:
            raise ValueError(f"{op}: {name}.t must be a 0-dim int64 tensor, got {t.dtype} {_shape(t)}")
        t = int(t)
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"{op}: {name}.t (tokens seen) must be a non-negative integer, got {t!r}")
    if not isinstance(S, Tensor):
        raise TypeError(f"{op}: {name}.S must be a torch.Tensor, got {type(S).__name__}")
    expected = (B, t.bit_length(), H, Dk, Dv)
    if tuple(S.shape) != expected:
        raise ValueError(
            f"{op}: {name}.S must have shape [B, L, H, {dims}] = [{', '.join(map(str, expected))}] "
            f"(L = bit_length(t) = {t.bit_length()} levels at t = {t}), got {_shape(S)}"
        )
    return S, t


def make_state(S: Tensor, t: int) -> FenwickState:
    return FenwickState(S, torch.tensor(t, dtype=torch.int64, device=S.device))


__all__ = [
    "FenwickState",
    "bit_length",
    "check_fenwick_state",
    "check_lambda",
    "check_power_of_two",
    "fenwick_advance",
    "init_levels",
    "level_matrix",
    "make_state",
    "required_levels",
    "trailing_ones",
]

"""Input validation shared by every op: clear errors that name the argument and what was expected.

Checks run once at the entry of an op (not inside loops). Checks of shapes, dtypes and devices
read nothing from the tensors; checks of *values* (a log gate <= 0, beta in [0, 2], unit-norm keys,
dt >= 0) read a reduction back to the host, a device synchronisation per call on a GPU, and are
skipped inside ``trusted_values()``, which every mixer enters (its gates are valid by construction).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

_VALUES_TRUSTED: ContextVar[bool] = ContextVar("longctx_values_trusted", default=False)


@contextmanager
def trusted_values() -> Iterator[None]:
    """Inside the block the ops skip their checks of input values (each reads a reduction back to
    the host: on a GPU a synchronisation that stalls the launch queue, several per layer and step).
    Shapes, dtypes and devices are still checked. ``Mixer.__call__`` enters it: a mixer builds its
    gates, betas and keys so that they are valid (logsigmoid, sigmoid, l2norm); a direct call of an
    op checks everything."""
    token = _VALUES_TRUSTED.set(True)
    try:
        yield
    finally:
        _VALUES_TRUSTED.reset(token)


def check_values() -> bool:
    """Whether the ops check input values now (False inside ``trusted_values()``)."""
    return not _VALUES_TRUSTED.get()


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int, else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_chunk_size(chunk_size: object) -> int:
    return check_positive_int("chunk_size", chunk_size)


def check_qkv(
    op: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    allow_gqa: bool = False,
    same_dv: bool = False,
) -> tuple[int, int, int, int, int, int]:
    """Validate ``q [B, T, H, D]``, ``k [B, T, Hk, D]``, ``v [B, T, Hk, Dv]``.

    Returns ``(B, T, H, Hk, D, Dv)``. With ``allow_gqa`` the key/value heads ``Hk`` may be fewer
    than the query heads ``H`` and must divide them; otherwise ``Hk == H``. With ``same_dv``,
    ``Dv == D`` is required.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{op}: {name} must have 4 dims [B, T, H, D], got shape {_shape(t)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    B, T, H, D = q.shape
    if k.shape[:2] != (B, T) or v.shape[:2] != (B, T):
        raise ValueError(
            f"{op}: q, k, v must share batch and length [B, T, ...]; got q {_shape(q)}, "
            f"k {_shape(k)}, v {_shape(v)}"
        )
    Hk = k.shape[2]
    if v.shape[2] != Hk:
        raise ValueError(f"{op}: k and v must have the same number of heads; got k {_shape(k)}, v {_shape(v)}")
    if k.shape[3] != D:
        raise ValueError(f"{op}: q and k head dims differ: q {_shape(q)} vs k {_shape(k)}")
    if allow_gqa:
        if H % Hk != 0:
            raise ValueError(
                f"{op}: number of query heads ({H}) must be a multiple of key/value heads ({Hk})"
            )
    elif Hk != H:
        raise ValueError(f"{op}: q and k must have the same number of heads; got {H} and {Hk}")
    Dv = v.shape[3]
    if same_dv and Dv != D:
        raise ValueError(f"{op}: v head dim must equal q/k head dim {D}, got {Dv}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{op}: q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    return B, T, H, Hk, D, Dv


def check_step_qkv(op: str, q: Tensor, k: Tensor, v: Tensor, *, allow_gqa: bool = False):
    """Validate one decode step: ``q [B, H, D]``, ``k [B, Hk, D]``, ``v [B, Hk, Dv]``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            shape = _shape(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{op}: {name} for one decode step must be [B, H, D], got {shape}")
    return check_qkv(op, q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), allow_gqa=allow_gqa)


def check_gate(op: str, name: str, g: Tensor, expected: tuple[int, ...], *, log_space: bool) -> None:
    """Validate a gate tensor's shape, and for log-space gates that no value is positive."""
    if not isinstance(g, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(g).__name__}")
    if tuple(g.shape) != tuple(expected):
        raise ValueError(
            f"{op}: {name} must have shape [{', '.join(map(str, expected))}], got {_shape(g)}"
        )
    if log_space and g.numel() and check_values() and bool((g > 0).any()):
        raise ValueError(
            f"{op}: {name} is a log-space forget gate and must be <= 0 (log of a decay in (0, 1]); "
            f"got max {g.max().item():.4g}. Pass e.g. F.logsigmoid(x), not sigmoid(x)."
        )


def check_state(op: str, name: str, state: Tensor, expected: tuple[int, ...]) -> None:
    if not isinstance(state, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(state).__name__}")
    if tuple(state.shape) != tuple(expected):
        raise ValueError(
            f"{op}: {name} must have shape [{', '.join(map(str, expected))}], got {_shape(state)}"
        )


def check_bidirectional(op: str, causal: object, initial_state: object,
                        output_final_state: bool) -> bool:
    """``causal`` must be a bool; the bidirectional form (``False``) takes and returns no state:
    an output at t depends on tokens after t, so a sequence cannot be continued piece by piece."""
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be True or False, got {causal!r}")
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError(
            f"{op}: causal=False (bidirectional) has no decode state: a query sees keys after it, "
            "so a sequence cannot be continued piece by piece; pass initial_state=None and "
            "output_final_state=False, or use causal=True"
        )
    return causal


def check_cu_seqlens(op: str, cu_seqlens: object, B: int, T: int) -> None:
    """Offsets of packed variable-length sequences: a 1-D integer tensor [N+1] from 0 to T, never
    decreasing, with the sequences packed into one row (B = 1)."""
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.is_floating_point() or cu_seqlens.is_complex():
        raise ValueError(f"{op}: cu_seqlens must be a 1-D integer tensor [N+1] of sequence offsets, "
                         f"got {_shape(cu_seqlens) if isinstance(cu_seqlens, Tensor) else type(cu_seqlens).__name__}")
    if B != 1:
        raise ValueError(f"{op}: with cu_seqlens the sequences are packed into one row: B must be 1, got {B}")
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != T or any(b < a for a, b in itertools.pairwise(cu)):
        raise ValueError(f"{op}: cu_seqlens must run from 0 to T = {T} without decreasing, got {cu[:8]}"
                         f"{' ...' if len(cu) > 8 else ''}")


def default_scale(scale: float | None, head_dim: int) -> float:
    """``scale`` if given, else ``head_dim ** -0.5`` (Vaswani et al. 2017)."""
    return head_dim**-0.5 if scale is None else float(scale)


__all__ = [
    "check_bidirectional",
    "check_chunk_size",
    "check_cu_seqlens",
    "check_gate",
    "check_positive_int",
    "check_qkv",
    "check_state",
    "check_step_qkv",
    "check_values",
    "default_scale",
    "trusted_values",
]

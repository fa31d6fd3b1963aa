"""Cache policies: which past keys/values a softmax-attention layer keeps while it decodes.

- ``full``: every past token (the cache grows with the stream, or is pre-allocated to ``max_len``).
- ``window(w)``: the last ``w`` tokens (StreamingLLM's "window attention" baseline).
- ``sinks(n_sink, w)``: the first ``n_sink`` tokens (the attention sinks) plus the last ``w``
  (StreamingLLM, Xiao et al. 2024, §3.2). Positions are assigned inside the cache: the kept
  tokens sit at positions ``0 .. n_sink + w - 1`` (§3.2, "Positional encoding"), so RoPE never
  sees a distance longer than the cache.

``window`` and ``sinks`` hold ``n_sink + w`` tokens whatever the stream length.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

POLICIES = ("full", "window", "sinks", "landmark")


@dataclass(frozen=True)
class CachePolicy:
    """``n_sink`` first tokens kept forever plus the last ``window`` (``None``: keep all)."""

    n_sink: int = 0  # attention-sink tokens kept from the start of the stream
    window: int | None = None  # recent tokens kept; None = no eviction (full cache)
    max_len: int | None = None  # full cache only: pre-allocate this many tokens, never more

    def __post_init__(self) -> None:
        if not isinstance(self.n_sink, int) or isinstance(self.n_sink, bool) or self.n_sink < 0:
            raise ValueError(f"CachePolicy.n_sink must be an int >= 0, got {self.n_sink!r}")
        if self.max_len is not None and (self.window is not None or not isinstance(self.max_len, int)
                                         or isinstance(self.max_len, bool) or self.max_len < 1):
            raise ValueError(f"CachePolicy.max_len must be a positive int, and only for a full cache "
                             f"(window=None); got max_len={self.max_len!r}, window={self.window!r}")
        if self.window is None:
            if self.n_sink:
                raise ValueError("CachePolicy: n_sink > 0 needs a window (sinks + the last `window` "
                                 "tokens); a full cache keeps every token anyway")
            return
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
            raise ValueError(f"CachePolicy.window must be a positive int or None (full), got {self.window!r}")

    @property
    def name(self) -> str:
        if self.window is None:
            return "full"
        return "sinks" if self.n_sink else "window"

    @property
    def capacity(self) -> int | None:
        """Tokens held at most (``None``: unbounded)."""
        return None if self.window is None else self.n_sink + self.window

    def describe(self) -> str:
        if self.window is None:
            return "full" if self.max_len is None else f"full(max_len={self.max_len})"
        return f"sinks({self.n_sink}, {self.window})" if self.n_sink else f"window({self.window})"

    def to_dict(self) -> dict:
        return {"policy": self.name, "n_sink": self.n_sink, "window": self.window, "max_len": self.max_len}


@dataclass(frozen=True)
class LandmarkPolicy:
    """Landmark retrieval (Mohtashami & Jaggi 2023, §3.2): a ``landmark_attention`` layer keeps
    every block and each decode step attends to the ``top_k`` blocks whose landmark keys score
    highest (per head), plus the open block. Memory grows with the stream; compute per token is
    O(top_k * block + T / block). Only for models trained with landmarks (the landmark mixer)."""

    top_k: int  # blocks retrieved per head at each decode step

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1:
            raise ValueError(f"LandmarkPolicy.top_k must be a positive int, got {self.top_k!r}")

    name = "landmark"
    n_sink = 0
    window = None
    capacity = None

    def describe(self) -> str:
        return f"landmark(top_k={self.top_k})"

    def to_dict(self) -> dict:
        return {"policy": "landmark", "top_k": self.top_k}


def landmark(top_k: int) -> LandmarkPolicy:
    return LandmarkPolicy(top_k)


def full(max_len: int | None = None) -> CachePolicy:
    """Keep every token: grows by doubling, or pre-allocated to ``max_len`` tokens (a longer
    stream is refused: a full cache does not evict)."""
    return CachePolicy(max_len=max_len)


def window(w: int) -> CachePolicy:
    return CachePolicy(0, w)


def sinks(n_sink: int, w: int) -> CachePolicy:
    return CachePolicy(n_sink, w)


def make_policy(name: str, n_sink: int = 4, window: int | None = None,
                top_k: int | None = None) -> CachePolicy | LandmarkPolicy:
    """A policy from its name (the CLI's ``--cache``): ``full``, ``window``, ``sinks`` or
    ``landmark`` (with ``top_k``)."""
    if name == "full":
        return CachePolicy()
    if name == "landmark":
        if top_k is None:
            raise ValueError("cache policy 'landmark' needs the number of retrieved blocks (--top-k)")
        return LandmarkPolicy(top_k)
    if name not in POLICIES:
        raise ValueError(f"unknown cache policy {name!r}; choose one of {', '.join(POLICIES)}")
    if window is None:
        raise ValueError(f"cache policy {name!r} needs a window size (--window)")
    return CachePolicy(n_sink if name == "sinks" else 0, window)


def check_fits_training(policy: CachePolicy, trained_len: int | None, rope_scaling: dict | None,
                        what: str = "the model") -> bool:
    """Warn when the cache spans more positions than ``what`` was trained on without a RoPE scaling.

    With sinks the largest position RoPE sees is ``n_sink + window - 1`` (positions are assigned
    inside the cache); past the trained length an unscaled RoPE extrapolates. Returns whether a
    warning was given.
    """
    cap = policy.capacity
    if cap is None or trained_len is None or cap <= trained_len or rope_scaling:
        return False
    warnings.warn(
        f"cache {policy.describe()} holds {cap} tokens but {what} was trained on {trained_len}: "
        f"RoPE will see positions up to {cap - 1}, which it never saw in training; use "
        f"n_sink + window <= {trained_len}, or give a RoPE scaling (e.g. --rope yarn "
        f"--rope-factor {-(-cap // trained_len)})", stacklevel=2)
    return True

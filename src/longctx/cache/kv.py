"""Pre-allocated key/value buffers of one attention layer, updated by index under a policy.

The buffers have a fixed shape (``n_sink + window`` slots for the streaming policies) and are
written in place, as gpt-fast does: memory is constant whatever the stream length. Layout:
slots ``0 .. n_sink-1`` hold the sink tokens, slots ``n_sink ..`` a ring of the last ``window``
tokens (token ``t >= n_sink`` lives in slot ``n_sink + (t - n_sink) % window``). Until the first
eviction the slots are in stream order.

**Positions inside the cache** (StreamingLLM §3.2). Keys arrive rotated by RoPE at their
absolute position ``t`` and the query of token ``t`` too. Once the cache is full the paper gives
the ``C = n_sink + window`` cached tokens the positions ``0 .. C-1`` and the query ``C-1``:

- a window key ``j`` is then at distance ``t - j`` from the query, the same as with absolute
  positions, so window keys are used as cached;
- a sink key ``i`` must be at distance ``C - 1 - i`` instead of ``t - i``: it is rotated forward
  by ``delta = t - (C - 1)`` positions (``R(delta) R(i) = R(i + delta)``, RoPE's rotations
  compose), from the key kept as it arrived (no drift from repeated rotation).

Only decode steps (one query) may evict: a multi-token update that does not fit would need a
different eviction per query, and is refused (``room()`` says how many tokens fit).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.cache.policy import CachePolicy
from longctx.position.rope import apply_rotary


def room(policy: CachePolicy, n_seen: int) -> int | None:
    """Tokens that can be added in one multi-token update before anything is evicted."""
    cap = policy.capacity
    return None if cap is None else max(cap - n_seen, 0)


def ring_slot(policy: CachePolicy, t: int) -> int:
    """The slot of absolute position ``t`` (``t`` past the sinks wraps around the window)."""
    if policy.window is None or t < policy.n_sink:
        return t
    return policy.n_sink + (t - policy.n_sink) % policy.window


def rotate_by(x: Tensor, delta: int, inv_freq: Tensor, seq_dim: int) -> Tensor:
    """RoPE rotation of every position of ``x`` by ``delta`` more positions (pure rotation,
    no attention scaling: the keys already carry it)."""
    if delta == 0:
        return x
    angles = delta * inv_freq.to(device=x.device, dtype=torch.float32)  # [R/2]
    emb = torch.cat((angles, angles))[None, :].expand(x.shape[seq_dim], -1)  # [S, R]
    y = x if seq_dim == 1 else x.transpose(1, seq_dim)
    y = apply_rotary(y, emb.cos(), emb.sin())
    return y if seq_dim == 1 else y.transpose(1, seq_dim)


class PolicyBuffers:
    """Keys/values ``[B, slots, H, D]`` (``seq_dim=1``, ours) or ``[B, H, slots, D]``
    (``seq_dim=2``, transformers) of one layer, with ``n_seen`` tokens written so far.

    ``inv_freq [R/2]``: the layer's RoPE inverse frequencies, used to move the sinks to their
    positions inside the cache; ``None`` for a layer without RoPE (positions play no role).
    """

    def __init__(self, policy: CachePolicy, seq_dim: int, inv_freq: Tensor | None = None,
                 keys: Tensor | None = None, values: Tensor | None = None,
                 sink_keys: Tensor | None = None, n_seen: int = 0) -> None:
        self.policy, self.seq_dim, self.inv_freq = policy, seq_dim, inv_freq
        self.keys, self.values, self.sink_keys, self.n_seen = keys, values, sink_keys, n_seen

    def allocate(self, like_k: Tensor, like_v: Tensor, slots: int) -> None:
        """Buffers of ``slots`` positions shaped like ``like_k`` / ``like_v`` (same batch, heads)."""
        def empty(like: Tensor, n: int) -> Tensor:
            shape = list(like.shape)
            shape[self.seq_dim] = n
            return like.new_zeros(shape)

        old_k, old_v = self.keys, self.values
        self.keys, self.values = empty(like_k, slots), empty(like_v, slots)
        if old_k is not None and self.n_seen:  # a full cache growing: copy what it holds
            self.keys.narrow(self.seq_dim, 0, self.n_seen).copy_(old_k.narrow(self.seq_dim, 0, self.n_seen))
            self.values.narrow(self.seq_dim, 0, self.n_seen).copy_(old_v.narrow(self.seq_dim, 0, self.n_seen))
        if self.policy.n_sink and self.sink_keys is None:
            self.sink_keys = empty(like_k, self.policy.n_sink)

    def _check(self, k: Tensor, v: Tensor) -> None:
        if self.keys is None:
            return
        for name, new, buf in (("keys", k, self.keys), ("values", v, self.values)):
            same = [s for i, s in enumerate(buf.shape) if i != self.seq_dim]
            got = [s for i, s in enumerate(new.shape) if i != self.seq_dim]
            if same != got or new.dtype != buf.dtype or new.device != buf.device:
                raise ValueError(
                    f"{self.policy.describe()} cache: new {name} have shape {list(new.shape)} "
                    f"{new.dtype} on {new.device} but the cache holds {list(buf.shape)} {buf.dtype} "
                    f"on {buf.device} (batch, heads and head size must stay the same; a cache is "
                    "made for one batch size: make a new one, or reset() it)")

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``T`` new keys/values and return the keys/values their queries attend to.

        Without eviction (the tokens fit): the cache in stream order, ``n_seen + T`` positions,
        to be used with a causal mask. With eviction (``T == 1`` only): every slot, sinks
        re-rotated, all visible to the one query.
        """
        self._check(k, v)
        T, p, d = k.shape[self.seq_dim], self.policy, self.seq_dim
        if p.max_len is not None and self.n_seen + T > p.max_len:
            raise ValueError(
                f"{p.describe()} cache: {self.n_seen} tokens held + {T} new > max_len={p.max_len}; "
                "a full cache does not evict: give a larger max_len, or stream with window/sinks")
        free = room(p, self.n_seen)
        if free is not None and T > free and T > 1:
            raise ValueError(
                f"{p.describe()} cache: a forward of {T} tokens with {self.n_seen} already seen "
                f"would evict tokens in the middle of the forward ({free} fit); feed the rest one "
                "token at a time (longctx.hf.prefill and the longctx models do this)")
        if self.keys is None or (free is None and self.n_seen + T > self.keys.shape[d]):
            size = p.capacity or p.max_len or max(
                2 * (self.keys.shape[d] if self.keys is not None else 0), self.n_seen + T, 64)  # full: doubling
            self.allocate(k, v, size)
        t0 = self.n_seen
        if free is None or T <= free:  # no eviction: slots t0 .. t0+T-1 in stream order
            self.keys.narrow(d, t0, T).copy_(k)
            self.values.narrow(d, t0, T).copy_(v)
            self._keep_sinks(k, t0)
            self.n_seen += T
            n = self.n_seen
            return self.keys.narrow(d, 0, n), self.values.narrow(d, 0, n)
        slot = ring_slot(p, t0)  # one token, evicting the oldest window token
        self.keys.narrow(d, slot, 1).copy_(k)
        self.values.narrow(d, slot, 1).copy_(v)
        self.n_seen += 1
        if p.n_sink and self.inv_freq is not None:  # the query sits at position C - 1: sinks move forward by t0 - (C - 1)
            rotated = rotate_by(self.sink_keys, t0 - (p.capacity - 1), self.inv_freq, d)
            self.keys.narrow(d, 0, p.n_sink).copy_(rotated)
        return self.keys, self.values

    def _keep_sinks(self, k: Tensor, t0: int) -> None:
        """Keep the sink keys as they arrived (rotated at positions 0 .. n_sink-1)."""
        n = min(self.policy.n_sink - t0, k.shape[self.seq_dim])
        if n > 0:
            self.sink_keys.narrow(self.seq_dim, t0, n).copy_(k.narrow(self.seq_dim, 0, n))

    def held(self) -> int:
        """Tokens the cache holds now."""
        cap = self.policy.capacity
        return self.n_seen if cap is None else min(self.n_seen, cap)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.sink_keys)
                   if t is not None)

    def reset(self) -> None:
        self.keys = self.values = self.sink_keys = None
        self.n_seen = 0

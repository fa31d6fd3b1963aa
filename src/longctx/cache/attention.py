"""Cache policies for longctx's own softmax-attention layers (``SoftmaxAttention``).

``PolicyKVState`` is the decode state of one layer under a policy; ``LongCtxLM.init_state(B,
cache=sinks(4, 252))`` gives every softmax-attention layer one. The layer hands it its input and
it runs the attention: projections and RoPE from the layer (at absolute positions), keys kept
and sinks re-positioned by ``PolicyBuffers`` (see ``kv.py`` for why that equals the paper's
positions inside the cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.cache.kv import PolicyBuffers, room
from longctx.cache.policy import CachePolicy
from longctx.layers.base import CacheState, Mixer
from longctx.layers.common import merge_heads
from longctx.ops.common.checks import default_scale


def check_policy_supported(mixer: Mixer, policy: CachePolicy) -> None:
    """Cache policies apply to softmax attention with RoPE or no position encoding."""
    from longctx.layers.softmax_attention import SoftmaxAttention  # the one mixer they apply to

    if not isinstance(mixer, SoftmaxAttention):
        raise ValueError(f"cache policy {policy.describe()}: applies to softmax_attention layers, "  # noqa: TRY004
                         f"not {getattr(mixer, 'name', type(mixer).__name__)}")
    c = mixer.config
    if not c.causal:
        mixer.check_causal_for_state()
    if c.position == "alibi":
        raise ValueError(f"cache policy {policy.describe()}: ALiBi layers are not supported (their "
                         "bias needs every kept token's position); use position='rope' or 'none'")
    if policy.window is not None and mixer.rope is not None and mixer.rope.rope_type == "dynamic":
        raise ValueError(
            f"cache policy {policy.describe()}: dynamic NTK RoPE rescales by the absolute length, "
            "which grows without bound in a stream; use rope_type 'yarn', 'ntk' or 'linear'")


@dataclass
class PolicyKVState(CacheState):
    k: Tensor  # [B, slots, Hk, D] keys rotated at their absolute positions (slot layout: kv.py)
    v: Tensor  # [B, slots, Hk, D]
    sink_k: Tensor  # [B, n_sink, Hk, D] the sink keys as they arrived
    n_seen: Tensor  # int64 0-dim: tokens seen (= absolute position of the next token)
    policy: CachePolicy = field(default_factory=CachePolicy)

    @classmethod
    def empty(cls, mixer: Mixer, batch_size: int, policy: CachePolicy, device=None,
              dtype: torch.dtype | None = None) -> PolicyKVState:
        """Buffers pre-allocated for the policy's capacity (a full cache starts empty and grows)."""
        check_policy_supported(mixer, policy)
        c = mixer.config
        dtype = dtype or mixer.param_dtype()

        def zeros(n: int) -> Tensor:
            return torch.zeros(batch_size, n, c.kv_heads, c.head_dim, device=device, dtype=dtype)

        n_seen = torch.zeros((), dtype=torch.int64, device=device)
        return cls(mixer.name, zeros(policy.capacity or 0), zeros(policy.capacity or 0),
                   zeros(policy.n_sink), n_seen, policy)

    def attend(self, mixer: Mixer, x: Tensor) -> tuple[Tensor, PolicyKVState]:
        """``x [B, T, d]`` continuing the stream -> ``(y [B, T, d], state)``.

        Tokens that fit without eviction go in one causal pass; the rest one at a time (each
        decode step evicts the oldest window token). Buffers are updated in place.
        """
        check_policy_supported(mixer, self.policy)
        if self.batch_size != x.shape[0]:
            raise ValueError(f"{mixer.name}: cache state has batch size {self.batch_size} but x has "
                             f"{x.shape[0]}; a cache is made for one batch size (init a new one)")
        inv_freq = mixer.rope.inv_freq if mixer.rope is not None else None
        bufs = PolicyBuffers(self.policy, 1, inv_freq, self.k, self.v, self.sink_k, int(self.n_seen))
        ys, start, T = [], 0, x.shape[1]
        while start < T:
            free = room(self.policy, bufs.n_seen)
            n = T - start if free is None else max(1, min(T - start, free))
            t0 = bufs.n_seen
            q, k, v = mixer.project(x[:, start:start + n], t0)  # [B, n, H, D], [B, n, Hk, D] x 2
            k_all, v_all = bufs.update(k, v)
            evicting = free is not None and n > free
            ys.append(mixer.wo(merge_heads(attend_keys(q, k_all, v_all, None if evicting else t0))))
            start += n
        y = torch.cat(ys, dim=1) if ys else x.new_zeros(x.shape)
        n_seen = torch.full((), bufs.n_seen, dtype=torch.int64, device=self.n_seen.device)
        return y, PolicyKVState(self.mixer, bufs.keys, bufs.values, self.sink_k, n_seen, self.policy)

    def held(self) -> int:
        """Tokens the cache holds now."""
        cap = self.policy.capacity
        n = int(self.n_seen)
        return n if cap is None else min(n, cap)


def attend_keys(q: Tensor, k: Tensor, v: Tensor, q_offset: int | None) -> Tensor:
    """Softmax attention of ``q [B, T, H, D]`` over ``k, v [B, S, Hk, D]`` (GQA) -> ``[B, T, H, D]``.

    ``q_offset``: query i sits at key position ``q_offset + i`` and sees keys ``<=`` it (causal);
    ``None``: every key is visible (a decode step over a policy's kept keys).
    """
    mask = None
    if q_offset is not None and q.shape[1] > 1:
        q_pos = q_offset + torch.arange(q.shape[1], device=q.device)
        mask = torch.arange(k.shape[1], device=q.device)[None, :] <= q_pos[:, None]  # [T, S]
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        scale=default_scale(None, q.shape[-1]), enable_gqa=True)
    return o.transpose(1, 2)

"""The cache policies as transformers ``Cache`` implementations (transformers 5.x, Llama family).

``PolicyCache(model, sinks(4, 1020))`` plugs into ``model.generate(..., past_key_values=cache)``
and ``model(ids, past_key_values=cache)``. transformers rotates keys at absolute positions before
``update``; ``PolicyBuffers`` keeps them and moves the sinks to their positions inside the cache
(see ``longctx/cache/kv.py``). ``get_seq_length`` is the number of tokens seen, so transformers
keeps giving queries their absolute positions, and ``get_mask_sizes`` tells its mask builder which
of the returned keys each query may see.
"""

from __future__ import annotations

from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from longctx.cache.kv import PolicyBuffers, room
from longctx.cache.policy import CachePolicy


class PolicyLayer(CacheLayerMixin):
    """One attention layer's keys/values ``[B, Hk, slots, D]`` under a policy."""

    is_compileable = False
    is_sliding = False  # the mask is a plain causal one over what ``update`` returns

    def __init__(self, policy: CachePolicy, inv_freq: Tensor | None) -> None:
        super().__init__()
        self.buffers = PolicyBuffers(policy, seq_dim=2, inv_freq=inv_freq)

    @property
    def policy(self) -> CachePolicy:
        return self.buffers.policy

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.buffers.update(key_states, value_states)
        self.keys, self.values = self.buffers.keys, self.buffers.values
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` of the keys ``update`` will return for these queries."""
        n = self.buffers.n_seen
        free = room(self.policy, n)
        if free is None or query_length <= free:  # stream order, causal over n + T positions
            return n + query_length, 0
        # one query over every kept slot: offsets that put all of them at or before the query
        cap = self.policy.capacity
        return cap, n + 1 - cap

    def get_seq_length(self) -> int:
        return self.buffers.n_seen

    def get_max_length(self) -> int:
        return self.policy.capacity or -1

    def held(self) -> int:
        return self.buffers.held()

    def reset(self) -> None:
        self.buffers.reset()
        self.keys = self.values = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"{self.policy.describe()} cache: cropping (assisted generation) "
                                  "is not supported; use a transformers DynamicCache")

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError(f"{self.policy.describe()} cache: beam search is not supported")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError(f"{self.policy.describe()} cache: num_return_sequences > 1 is not "
                                  "supported; repeat the prompt in the batch instead")

    def batch_select_indices(self, indices) -> None:
        raise NotImplementedError(f"{self.policy.describe()} cache: batch selection is not supported")


class PolicyCache(Cache):
    """A transformers ``Cache`` with one ``PolicyLayer`` per decoder layer."""

    def __init__(self, model, policy: CachePolicy) -> None:
        from longctx.hf.load import check_hf_policy

        check_hf_policy(policy)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        rotary = find_rotary(model)
        inv_freq = rotary.inv_freq.detach() if rotary is not None else None
        super().__init__(layers=[PolicyLayer(policy, inv_freq) for _ in range(config.num_hidden_layers)])
        self.policy = policy

    def held(self) -> int:
        """Tokens the cache holds now (per layer)."""
        return self.layers[0].held() if self.layers else 0

    def nbytes(self) -> int:
        """Bytes of the keys/values buffers of every layer."""
        return sum(layer.buffers.nbytes() for layer in self.layers)

    def __repr__(self) -> str:
        return f"PolicyCache({self.policy.describe()}, layers={len(self.layers)})"


def find_rotary(model):
    """The model's rotary embedding module (``model.model.rotary_emb`` for Llama-family models)."""
    base = getattr(model, "model", model)
    return getattr(base, "rotary_emb", None)

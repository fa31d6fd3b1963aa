"""KV-cache policies (full, window, StreamingLLM sinks) for longctx models and transformers models.

``longctx.cache.sinks(4, 1020)`` is a policy; ``LongCtxLM.init_state(B, cache=policy)`` applies
it to a longctx model, ``longctx.hf.PolicyCache(model, policy)`` to a transformers model.
"""

from longctx.cache.attention import PolicyKVState
from longctx.cache.kv import PolicyBuffers
from longctx.cache.policy import (
    POLICIES,
    CachePolicy,
    LandmarkPolicy,
    check_fits_training,
    full,
    landmark,
    make_policy,
    sinks,
    window,
)

__all__ = ["POLICIES", "CachePolicy", "LandmarkPolicy", "PolicyBuffers", "PolicyKVState",
           "check_fits_training", "full", "landmark", "make_policy", "sinks", "window"]

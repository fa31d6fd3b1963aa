"""Decoding beyond one token per target forward: speculative decoding with a draft model,
single- and multi-candidate (batch or token-tree) verification, for any ``LongCtxLM``."""

from longctx.generate.candidates import TokenTree, walk
from longctx.generate.sampling import Sampler, residual
from longctx.generate.speculative import (
    ROLLBACKS,
    VERIFY_MODES,
    SpecStats,
    resolve_rollback,
    speculative,
)

__all__ = [
    "ROLLBACKS",
    "VERIFY_MODES",
    "Sampler",
    "SpecStats",
    "TokenTree",
    "residual",
    "resolve_rollback",
    "speculative",
    "walk",
]

"""transformers integration (the ``hf`` extra): load a local RoPE decoder and stream it under a
KV-cache policy. ``longctx.hf.load(path, rope_scaling=..., cache=sinks(4, 1020))``."""

try:
    import transformers  # noqa: F401
except ImportError as e:  # the hf extra is optional
    raise ImportError("longctx.hf needs transformers: pip install 'longctx[hf]'") from e

from longctx.hf.cache import PolicyCache, PolicyLayer
from longctx.hf.load import SUPPORTED, HFModel, load, prefill

__all__ = ["SUPPORTED", "HFModel", "PolicyCache", "PolicyLayer", "load", "prefill"]

"""Load a local transformers decoder (Llama / Mistral / Qwen style, RoPE) with a RoPE scaling and
a cache policy. Never from a hub: the path must be a directory written by ``save_pretrained``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from longctx.cache.policy import CachePolicy, check_fits_training
from longctx.hf.cache import PolicyCache, find_rotary
from longctx.position.rope import check_rope_scaling

# decoder-only architectures with RoPE whose attention calls ``past_key_values.update`` after
# rotating the keys (what ``PolicyCache`` relies on)
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class HFModel:
    """A loaded model, its tokenizer (``None`` if the directory has none) and the cache policy."""

    model: torch.nn.Module
    tokenizer: object | None
    policy: CachePolicy | None
    path: Path

    def new_cache(self, policy: CachePolicy | None = None) -> PolicyCache | None:
        """A fresh cache for one stream (``None`` for the model's own default cache)."""
        policy = policy or self.policy
        return None if policy is None else PolicyCache(self.model, policy)

    def __post_init__(self) -> None:
        check_hf_policy(self.policy)

    @property
    def trained_len(self) -> int | None:
        return trained_length(self.model.config)


def check_hf_policy(policy) -> None:
    if policy is not None and not isinstance(policy, CachePolicy):
        raise ValueError(f"cache policy {policy.describe()} needs a model trained with landmark "
                         "tokens (a longctx landmark_attention checkpoint), not a transformers model")


def check_local_model_dir(path: str | Path) -> Path:
    """``path`` as a local model directory with a ``config.json``; a clear error otherwise."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"model path {str(path)!r} is not a local directory; longctx never downloads "
                         "models: give the directory a model was saved to (save_pretrained)")
    if not (p / "config.json").is_file():
        raise ValueError(f"model path {str(p)!r} has no config.json: it is not a transformers model "
                         "directory (nor a longctx checkpoint)")
    return p


def check_architecture(config) -> None:
    """Refuse models that are not RoPE decoders of a supported family, naming the architecture."""
    model_type = getattr(config, "model_type", "?")
    arch = ", ".join(getattr(config, "architectures", None) or []) or model_type
    if model_type not in SUPPORTED:
        raise ValueError(f"architecture {arch!r} (model_type {model_type!r}) is not supported: "
                         f"longctx's cache policies need a RoPE decoder of the {', '.join(SUPPORTED)} "
                         "family")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"architecture {arch!r} is an encoder-decoder; only decoders are supported")


def trained_length(config) -> int | None:
    """The length the model was trained on: the RoPE scaling's original length, else
    ``max_position_embeddings``."""
    params = getattr(config, "rope_parameters", None) or {}
    return params.get("original_max_position_embeddings") or getattr(config, "max_position_embeddings", None)


def with_rope_scaling(config, scaling: dict) -> None:
    """Set transformers' rope parameters to ``scaling`` (our validated form), keeping rope_theta."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    scaling = dict(scaling)
    scaling.setdefault("original_max_position_embeddings", trained_length(config))
    scaling = check_rope_scaling(scaling)
    config.rope_parameters = {"rope_theta": theta, **scaling}


def load(path: str | Path, rope_scaling: dict | None = None, cache: CachePolicy | None = None,
         dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> HFModel:
    """Load the model in the local directory ``path`` (``from_pretrained``, local files only).

    ``rope_scaling``: transformers' rope parameters (``{"rope_type": "yarn", "factor": 4.0}``;
    ``original_max_position_embeddings`` defaults to the model's ``max_position_embeddings``).
    ``cache``: a policy that ``HFModel.new_cache()`` turns into a ``PolicyCache``; a warning
    names the fix if it spans more positions than the model was trained on without a scaling.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    check_hf_policy(cache)
    p = check_local_model_dir(path)
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"model path {str(p)!r}: cannot read its config.json: {e}") from None
    check_architecture(config)
    if rope_scaling is not None:
        with_rope_scaling(config, rope_scaling)
    model = AutoModelForCausalLM.from_pretrained(p, config=config, local_files_only=True, dtype=dtype)
    model = model.to(device).eval()
    if cache is not None:
        rotary = find_rotary(model)
        if cache.window is not None and rotary is not None and getattr(rotary, "rope_type", "") == "dynamic":
            raise ValueError(f"cache policy {cache.describe()}: dynamic NTK RoPE rescales by the "
                             "absolute length, which grows without bound in a stream; use yarn, "
                             "linear or ntk")
        check_fits_training(cache, trained_length(config), rope_scaling, what=f"{p.name}")
    return HFModel(model, load_tokenizer(p), cache, p)


def load_tokenizer(path: Path):
    """The tokenizer saved beside the model, or ``None`` if the directory has none."""
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@torch.no_grad()
def prefill(model, ids: Tensor, cache: PolicyCache) -> Tensor:
    """Feed ``ids [B, T]`` into ``cache``: as many tokens as fit in one forward, the rest one at a
    time (each evicts). Returns the logits of the last token ``[B, vocab]``."""
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"prefill: ids must be [B, T] with T >= 1, got {list(ids.shape)}")
    start, T, logits = 0, ids.shape[1], None
    while start < T:
        free = cache.layers[0].get_max_length() - cache.get_seq_length() if cache.policy.capacity else T
        n = max(1, min(T - start, free))
        logits = model(ids[:, start:start + n], past_key_values=cache, use_cache=True).logits
        start += n
    return logits[:, -1]

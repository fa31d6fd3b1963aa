"""Cache policies as transformers caches, on a tiny random Llama saved to and loaded from disk."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from longctx.cache import full, sinks, window
from longctx.hf import PolicyCache, load, prefill
from tests.helpers import assert_close

V = 64


def save_tiny_llama(path, n_layers: int, n_kv_heads: int, seed: int):
    """A random Llama (trained length 64) saved with save_pretrained."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=n_layers, num_attention_heads=4,
                                   num_key_value_heads=n_kv_heads, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """1 layer, GQA: keys/values of a token depend on that token only."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), 1, 2, seed=0)


@pytest.fixture(scope="module")
def llama2_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-2"), 2, 4, seed=1)


def ids(b: int = 2, t: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def kept(t: int, n_sink: int, w: int) -> list[int]:
    return list(range(min(t + 1, n_sink))) + list(range(max(n_sink, t - w + 1), t + 1))


@torch.no_grad()
@pytest.mark.parametrize("policy", [sinks(2, 5), window(6)], ids=str)
def test_stream_equals_the_kept_tokens_at_cache_positions(llama_dir, policy) -> None:
    model = load(llama_dir, dtype=torch.float64).model
    x = ids()
    cache = PolicyCache(model, policy)
    for t in range(x.shape[1]):
        got = model(x[:, t:t + 1], past_key_values=cache, use_cache=True).logits[:, -1]
        ref = model(x[:, kept(t, policy.n_sink, policy.window)]).logits[:, -1]
        # transformers computes RoPE's cos/sin in float32 even for a float64 model: 1e-6, not 1e-12
        assert_close(ref, got, rtol=1e-6, name=f"logits at t={t}")


@torch.no_grad()
def test_sinks_with_room_for_everything_generate_like_the_full_cache(llama2_dir) -> None:
    model = load(llama2_dir).model
    prompt = ids(2, 10)
    mask = torch.ones_like(prompt)
    ref = model.generate(prompt, attention_mask=mask, max_new_tokens=25, do_sample=False)
    for policy in (sinks(4, 100), full()):
        got = model.generate(prompt, attention_mask=mask, max_new_tokens=25, do_sample=False,
                             past_key_values=PolicyCache(model, policy))
        assert torch.equal(got, ref)


@torch.no_grad()
def test_long_stream_runs_at_constant_cache_memory(llama2_dir) -> None:
    model = load(llama2_dir).model
    policy = sinks(4, 12)
    cache = PolicyCache(model, policy)
    prompt = ids(1, 8)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=2,
                         do_sample=False, past_key_values=cache)
    n0, ptr = cache.nbytes(), cache.layers[0].keys.data_ptr()
    x = out[:, -1:]
    for _ in range(20 * policy.capacity):  # 20x the cache
        logits = model(x, past_key_values=cache, use_cache=True).logits[:, -1]
        assert torch.isfinite(logits).all()
        x = logits.argmax(-1, keepdim=True)
    assert cache.nbytes() == n0 and cache.layers[0].keys.data_ptr() == ptr
    assert cache.layers[0].keys.shape[2] == 16 and cache.held() == 16
    assert cache.get_seq_length() == 8 + 1 + 20 * 16


@torch.no_grad()
def test_prefill_longer_than_the_cache_equals_token_by_token(llama2_dir) -> None:
    model = load(llama2_dir, dtype=torch.float64).model
    x = ids(1, 40)
    c1, c2 = PolicyCache(model, sinks(2, 10)), PolicyCache(model, sinks(2, 10))
    last = prefill(model, x, c1)
    for t in range(40):
        ref = model(x[:, t:t + 1], past_key_values=c2, use_cache=True).logits[:, -1]
    assert_close(ref, last, rtol=1e-10)
    with pytest.raises(ValueError, match="would evict tokens in the middle of the forward"):
        model(x, past_key_values=PolicyCache(model, sinks(2, 10)), use_cache=True)


def test_load_errors(llama_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="not a local directory; longctx never downloads"):
        load("meta-llama/Llama-2-7b-hf")
    with pytest.raises(ValueError, match="has no config.json"):
        load(tmp_path)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="architecture 'BertModel' .* is not supported"):
        load(bert)
    with pytest.warns(UserWarning, match="holds 132 tokens but tiny-llama.* was trained on 64"):
        load(llama_dir, cache=sinks(4, 128))
    with pytest.raises(ValueError, match="dynamic NTK"):
        load(llama_dir, cache=sinks(4, 28), rope_scaling={"rope_type": "dynamic", "factor": 2.0})


@torch.no_grad()
def test_rope_scaling_is_applied(llama_dir) -> None:
    h = load(llama_dir, rope_scaling={"rope_type": "yarn", "factor": 4.0}, cache=sinks(4, 200))
    params = h.model.config.rope_parameters
    assert params["rope_type"] == "yarn" and params["original_max_position_embeddings"] == 64
    from longctx.position import rope_frequencies
    ours, _ = rope_frequencies(8, params["rope_theta"], {"rope_type": "yarn", "factor": 4.0,
                                                         "original_max_position_embeddings": 64})
    assert_close(ours, h.model.model.rotary_emb.inv_freq, rtol=1e-6)
    x = ids(1, 300)
    cache = h.new_cache()
    assert torch.isfinite(prefill(h.model, x, cache)).all()


def test_cache_is_made_for_one_batch_size(llama_dir) -> None:
    model = load(llama_dir).model
    cache = PolicyCache(model, sinks(2, 6))
    model(ids(2, 3), past_key_values=cache, use_cache=True)
    with pytest.raises(ValueError, match="a cache is made for one batch size"):
        model(ids(3, 1), past_key_values=cache, use_cache=True)


def test_landmark_policy_is_refused_for_transformers_models(llama_dir) -> None:
    from longctx.cache import landmark

    with pytest.raises(ValueError, match="needs a model trained with landmark tokens"):
        load(llama_dir, cache=landmark(4))

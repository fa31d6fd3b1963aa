"""The mixer registry: names, building, and config errors that name what is wrong."""

from __future__ import annotations

import pytest
import torch

from longctx.errors import UnknownNameError
from longctx.layers import Mixer, MixerConfig, build, config_class, describe, make_config, names

EXPECTED = {"softmax_attention", "sliding_window_attention", "linear_attention", "retention", "gla",
            "deltanet", "gated_deltanet", "mamba", "mamba2", "aug_linear_attention",
            "grouped_linear_attention", "log_linear_attention", "log_linear_gla",
            "log_linear_mamba2", "log_linear_gated_deltanet", "landmark_attention",
            "dilated_attention", "longformer_attention", "linformer", "nystromformer",
            "multi_token_attention", "s4d", "rwkv4", "s5", "h3", "mega", "rmt", "rwkv6", "s4", "block_recurrent"}


def test_names_lists_every_mixer_once() -> None:
    got = names()
    assert set(got) == EXPECTED
    assert len(got) == len(set(got)) == len(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_build_each_mixer(name: str) -> None:
    m = build(name, d_model=32, n_heads=2)
    assert isinstance(m, Mixer)
    assert m.name == name
    assert m.config.d_model == 32 and m.config.n_heads == 2
    assert isinstance(m.config, config_class(name))
    assert isinstance(describe(name), str) and describe(name)
    y, state = m(torch.randn(1, 3, 32))
    assert y.shape == (1, 3, 32) and state is None


def test_make_config_is_the_dataclass() -> None:
    cfg = make_config("sliding_window_attention", d_model=32, n_heads=2, window=8)
    assert isinstance(cfg, MixerConfig)
    assert cfg.window == 8 and cfg.head_dim == 16


@pytest.mark.parametrize("fn", [build, config_class, describe])
def test_unknown_name_lists_known_and_closest(fn) -> None:
    with pytest.raises(UnknownNameError) as info:
        fn("gla2") if fn is not build else fn("gla2", d_model=32, n_heads=2)
    msg = str(info.value)
    assert "'gla2'" in msg
    assert "Did you mean 'gla'?" in msg
    for name in EXPECTED:
        assert name in msg
    assert isinstance(info.value, KeyError)  # callers catching KeyError still work


def test_unknown_name_without_close_match_still_lists_known() -> None:
    with pytest.raises(UnknownNameError) as info:
        build("zzzzzz", d_model=32, n_heads=2)
    msg = str(info.value)
    assert "Did you mean" not in msg
    assert all(name in msg for name in EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unknown_config_key_is_named(name: str) -> None:
    with pytest.raises(TypeError, match="stpes"):
        build(name, d_model=32, n_heads=2, stpes=3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("d_model,n_heads", [(32, 3), (30, 4)])
def test_n_heads_must_divide_d_model(name: str, d_model: int, n_heads: int) -> None:
    with pytest.raises(ValueError, match="n_heads"):
        build(name, d_model=d_model, n_heads=n_heads)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("field,value", [("d_model", 0), ("n_heads", 0), ("n_heads", -2),
                                         ("d_model", 32.0), ("n_heads", True)])
def test_base_fields_must_be_positive_ints(name: str, field: str, value) -> None:
    kwargs = {"d_model": 32, "n_heads": 2, field: value}
    with pytest.raises(ValueError, match=field):
        build(name, **kwargs)


@pytest.mark.parametrize("name,options,field", [
    ("sliding_window_attention", {"window": 0}, "window"),
    ("sliding_window_attention", {"window": -4}, "window"),
    ("sliding_window_attention", {"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
    ("softmax_attention", {"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
    ("softmax_attention", {"n_kv_heads": 0}, "n_kv_heads"),
    ("softmax_attention", {"backend": "flash"}, "backend"),
    ("linear_attention", {"feature_map": "softplus"}, "feature_map"),
    ("linear_attention", {"feature_dim": 0}, "feature_dim"),
    ("gla", {"gate_rank": 0}, "gate_rank"),
    ("gla", {"gate_tau": 0.0}, "gate_tau"),
    ("gla", {"chunk_size": 0}, "chunk_size"),
    ("retention", {"chunk_size": 0}, "chunk_size"),
])
def test_bad_mixer_options_name_the_field(name: str, options: dict, field: str) -> None:
    kwargs = {"d_model": 32, "n_heads": 2, **options}
    with pytest.raises(ValueError, match=field):
        build(name, **kwargs)


def test_valid_gqa_builds() -> None:
    m = build("softmax_attention", d_model=32, n_heads=4, n_kv_heads=2)
    assert m.wk.out_features == 2 * 8
    assert m.init_state(1).k.shape[2] == 2

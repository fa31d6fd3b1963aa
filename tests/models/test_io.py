"""LongCtxLM checkpoints: round trip and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from longctx.models.io import is_longctx_checkpoint, load_lm, save_lm
from longctx.models.lm import LMConfig, LongCtxLM


def model() -> LongCtxLM:
    torch.manual_seed(0)
    return LongCtxLM(LMConfig(vocab_size=30, d_model=16, n_layers=2, n_heads=2,
                              mixer=["softmax_attention", "gla"]))


def test_round_trip(tmp_path) -> None:
    m = model()
    save_lm(m, tmp_path / "ck", meta={"seq_len": 64})
    assert is_longctx_checkpoint(tmp_path / "ck") and not is_longctx_checkpoint(tmp_path)
    loaded, meta = load_lm(tmp_path / "ck")
    x = torch.randint(0, 30, (2, 9))
    assert meta == {"seq_len": 64} and not loaded.training
    assert torch.equal(loaded(x)[0], m.eval()(x)[0])


def test_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        load_lm(tmp_path / "missing")
    with pytest.raises(ValueError, match="has no config.json"):
        load_lm(tmp_path)
    ck = save_lm(model(), tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_lm(ck)
    (ck / "config.json").write_text(json.dumps({**cfg, "format": "other"}))
    with pytest.raises(ValueError, match="is not a longctx LM config"):
        load_lm(ck)
    (ck / "config.json").write_text(json.dumps({**cfg, "version": 9}))
    with pytest.raises(ValueError, match="version 9"):
        load_lm(ck)
    (ck / "config.json").write_text(json.dumps({**cfg, "lm_config": {**cfg["lm_config"], "d_model": 32}}))
    with pytest.raises(ValueError, match="weight 'embed.weight' has shape"):
        load_lm(ck)
    (ck / "config.json").write_text(json.dumps({**cfg, "lm_config": {**cfg["lm_config"], "n_layers": 3,
                                                                     "mixer": "gla"}}))
    with pytest.raises(ValueError, match="do not match the config"):
        load_lm(ck)
    (ck / "config.json").write_text(json.dumps(cfg))
    (ck / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.pt cannot be read"):
        load_lm(ck)

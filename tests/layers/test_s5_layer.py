"""The s5 layer: HiPPO-N initialisation, configuration errors, an LM decodes."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from longctx.models.lm import LMConfig, LongCtxLM


def test_initialisation_and_errors() -> None:
    m = build("s5", d_model=8, n_heads=2, d_state=4)
    lam = m.ssm_params()["Lambda"]
    assert lam.shape == (4,) and torch.allclose(lam.real, torch.full((4,), -0.5))
    assert m.C_backward is None and build("s5", d_model=8, n_heads=2, causal=False).C_backward is not None
    with pytest.raises(ValueError, match="need 0 < dt_min <= dt_max"):
        build("s5", d_model=8, n_heads=2, dt_min=-1.0)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        build("s5", d_model=8, n_heads=2, chunk_size=0)


def test_lm_generates_with_s5_layers() -> None:
    torch.manual_seed(0)
    model = LongCtxLM(LMConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=2, mixer="s5",
                               mixer_options={"s5": {"d_state": 8, "chunk_size": 4}})).double().eval()
    ids = torch.randint(0, 20, (2, 9))
    out = model.generate(ids, 6)
    logits = model(out[:, :-1])[0]
    assert torch.equal(logits[:, 8:].argmax(-1), out[:, 9:])

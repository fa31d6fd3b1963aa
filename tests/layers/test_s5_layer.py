"""The s5 layer: HiPPO-N initialisation, configuration errors, an LM decodes."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from tests.helpers import assert_lm_decodes_like_forward


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
    assert_lm_decodes_like_forward("s5", {"d_state": 8, "chunk_size": 4})

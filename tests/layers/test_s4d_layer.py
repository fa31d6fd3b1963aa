"""The s4d layer: configuration errors, parameterisation, bidirectional form, an LM decodes."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build
from tests.helpers import assert_lm_decodes_like_forward


def test_parameterisation_is_stable_and_as_documented() -> None:
    torch.manual_seed(0)
    m = build("s4d", d_model=8, n_heads=2, d_state=4, init="inv", dt_min=0.01, dt_max=0.05)
    p = m.ssm_params()
    assert p["A"].shape == (8, 4) and (p["A"].real < 0).all()
    assert ((p["dt"] >= 0.01 - 1e-7) & (p["dt"] <= 0.05 + 1e-7)).all()
    assert torch.equal(p["B"], torch.ones(8, 4, dtype=torch.complex64))
    assert m.C_backward is None
    assert build("s4d", d_model=8, n_heads=2, d_state=4, causal=False).C_backward is not None


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="need 0 < dt_min <= dt_max"):
        build("s4d", d_model=8, n_heads=2, dt_min=0.0)
    with pytest.raises(ValueError, match=r"init must be one of \['lin', 'inv'\]"):
        build("s4d", d_model=8, n_heads=2, init="legs")
    with pytest.raises(ValueError, match="discretization must be one of"):
        build("s4d", d_model=8, n_heads=2, discretization="euler")
    with pytest.raises(ValueError, match="d_state must be a positive integer"):
        build("s4d", d_model=8, n_heads=2, d_state=0)
    bidir = build("s4d", d_model=8, n_heads=2, causal=False)
    with pytest.raises(ValueError, match="configured bidirectional"):
        bidir.init_state(1)


def test_lm_generates_with_s4d_layers() -> None:
    assert_lm_decodes_like_forward("s4d", {"d_state": 8})

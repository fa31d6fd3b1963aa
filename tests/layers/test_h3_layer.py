"""The h3 layer: configuration errors, the shift register, an LM decodes."""

from __future__ import annotations

import pytest

from longctx.layers import build
from tests.helpers import assert_lm_decodes_like_forward


def test_config_errors_and_state_shapes() -> None:
    with pytest.raises(ValueError, match="shift_size must be a positive integer"):
        build("h3", d_model=8, n_heads=2, shift_size=0)
    with pytest.raises(ValueError, match="need 0 < dt_min <= dt_max"):
        build("h3", d_model=8, n_heads=2, dt_min=1.0, dt_max=0.1)
    m = build("h3", d_model=8, n_heads=2, d_state=3, shift_size=4)
    st = m.init_state(2)
    assert st.k_history.shape == (2, 3, 8) and st.S.shape == (2, 8, 3, 4, 2)


def test_head_size_sets_the_heads() -> None:
    # zoology's H3: head_size 1 -> one SSM per channel, whatever n_heads the model passes
    m = build("h3", d_model=8, n_heads=1, d_state=3, head_size=1)
    assert m.config.n_heads == 8 and m.init_state(2).S.shape == (2, 8, 3, 1, 2)
    assert build("h3", d_model=8, n_heads=1, head_size=4).config.n_heads == 2
    with pytest.raises(ValueError, match="head_size=3 must divide d_model=8"):
        build("h3", d_model=8, n_heads=1, head_size=3)
    with pytest.raises(ValueError, match="head_size must be a non-negative integer"):
        build("h3", d_model=8, n_heads=1, head_size=-1)


def test_lm_generates_with_zoology_heads() -> None:
    assert_lm_decodes_like_forward("h3", {"d_state": 4, "shift_size": 3, "head_size": 1})


def test_lm_generates_with_h3_layers() -> None:
    assert_lm_decodes_like_forward("h3", {"d_state": 4, "shift_size": 3})

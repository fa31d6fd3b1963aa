"""Launch settings: call-site defaults, overrides inside a block only, bad settings named."""

from __future__ import annotations

import pytest

from longctx.ops.common.triton_launch import OVERRIDES, launch_options, launch_overrides


def test_overrides_apply_inside_the_block_only() -> None:
    assert launch_options("gla.fwd_h", num_warps=4, num_stages=3) == {"num_warps": 4, "num_stages": 3}
    with launch_overrides({"gla.fwd_h": {"num_warps": 8}}):
        assert launch_options("gla.fwd_h", num_warps=4, num_stages=3) == {"num_warps": 8, "num_stages": 3}
        assert launch_options("gla.fwd_o", num_warps=4) == {"num_warps": 4}
    assert launch_options("gla.fwd_h", num_warps=4, num_stages=3) == {"num_warps": 4, "num_stages": 3}
    assert OVERRIDES == {}


def test_nested_overrides_add_to_the_outer_ones() -> None:
    with launch_overrides({"gla.fwd_h": {"num_warps": 8, "num_stages": 2}}):
        with launch_overrides({"gla.fwd_h": {"num_stages": 1}}):
            assert launch_options("gla.fwd_h", num_warps=4, num_stages=3) == {"num_warps": 8, "num_stages": 1}
        assert launch_options("gla.fwd_h", num_warps=4, num_stages=3) == {"num_warps": 8, "num_stages": 2}
    assert OVERRIDES == {}


def test_overrides_restored_after_an_error() -> None:
    with pytest.raises(RuntimeError, match="inside"), launch_overrides({"delta.delta_dh": {"num_warps": 8}}):
        raise RuntimeError("inside")
    assert OVERRIDES == {}


def test_unknown_setting_is_named() -> None:
    with pytest.raises(ValueError, match=r"gla.fwd_A: unknown setting\(s\) \['BV'\]"), \
            launch_overrides({"gla.fwd_A": {"BV": 32}}):
        pass
    assert OVERRIDES == {}


def test_state_pass_tiles_are_settings() -> None:
    # the state passes size their grid from BK / BV: tunable there, checked as tl.dot tiles
    with launch_overrides({"gla.fwd_h": {"BK": 32, "BV": 16}}):
        assert launch_options("gla.fwd_h", num_warps=4, BK=64, BV=64) == {"num_warps": 4, "BK": 32, "BV": 16}
    for bad in (24, 8, 128):
        with pytest.raises(ValueError, match=f"gla.bwd_dh: BK must be a power of two from 16 .* to 64, got {bad}"), \
                launch_overrides({"gla.bwd_dh": {"BK": bad}}):
            pass
    # the forward state passes' BV (V's columns, the product's N) may be 128; their BK may not
    with launch_overrides({"gla.fwd_h": {"BV": 128}, "scalar_decay.fwd_h": {"BK": 32, "BV": 128},
                           "gla.fwd_o": {"BV": 128}}):
        pass
    for kernel, tile in [("gla.fwd_h", "BK"), ("gla.bwd_dh", "BV"), ("scalar_decay.bwd_dh", "BV")]:
        with pytest.raises(ValueError, match=f"{kernel}: {tile} must be .* to 64, got 128"), \
                launch_overrides({kernel: {tile: 128}}):
            pass
    assert OVERRIDES == {}

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


def test_overrides_restored_after_an_error() -> None:
    with pytest.raises(RuntimeError, match="inside"), launch_overrides({"delta.delta_dh": {"num_warps": 8}}):
        raise RuntimeError("inside")
    assert OVERRIDES == {}


def test_unknown_setting_is_named() -> None:
    with pytest.raises(ValueError, match=r"gla.fwd_h: unknown setting\(s\) \['BV'\]"), \
            launch_overrides({"gla.fwd_h": {"BV": 32}}):
        pass
    assert OVERRIDES == {}

"""The shared op-contract helpers: validation messages and chunk padding."""

from __future__ import annotations

import pytest
import torch

from longctx.ops.common import (
    check_chunk_size,
    check_gate,
    check_positive_int,
    check_qkv,
    check_state,
    check_step_qkv,
    check_values,
    default_scale,
    pad_to_multiple,
    trusted_values,
)


def qkv(B=2, T=5, H=4, Hk=4, D=8, Dv=6, dtype=torch.float64):
    return (torch.randn(B, T, H, D, dtype=dtype), torch.randn(B, T, Hk, D, dtype=dtype),
            torch.randn(B, T, Hk, Dv, dtype=dtype))


def test_check_qkv_returns_dims() -> None:
    assert check_qkv("op", *qkv()) == (2, 5, 4, 4, 8, 6)
    assert check_qkv("op", *qkv(Hk=2), allow_gqa=True) == (2, 5, 4, 2, 8, 6)


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, v: (q[0], k, v), r"op: q must have 4 dims \[B, T, H, D\], got shape \[5, 4, 8\]"),
    (lambda q, k, v: (q, k[..., :4], v), "q and k head dims differ"),
    (lambda q, k, v: (q, k[:, :3], v), "must share batch and length"),
    (lambda q, k, v: (q, k, v[:, :, :2]), "k and v must have the same number of heads"),
    (lambda q, k, v: (q, k.float(), v), "must share a dtype"),
    (lambda q, k, v: (q.long(), k, v), "q must be a floating-point tensor"),
    (lambda q, k, v: (q, k.numpy(), v), "k must be a torch.Tensor"),
])
def test_check_qkv_names_what_is_wrong(bad, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        check_qkv("op", *bad(*qkv()))


def test_check_qkv_head_counts() -> None:
    with pytest.raises(ValueError, match="same number of heads; got 4 and 2"):
        check_qkv("op", *qkv(Hk=2))
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of key/value heads \(3\)"):
        check_qkv("op", *qkv(Hk=3), allow_gqa=True)
    with pytest.raises(ValueError, match="v head dim must equal q/k head dim 8, got 6"):
        check_qkv("op", *qkv(), same_dv=True)


def test_check_step_qkv() -> None:
    q, k, v = (t[:, 0] for t in qkv())
    assert check_step_qkv("op", q, k, v)[1] == 1
    with pytest.raises(ValueError, match=r"q for one decode step must be \[B, H, D\]"):
        check_step_qkv("op", q[:, None], k, v)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_positive_ints(value) -> None:
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        check_chunk_size(value)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        check_positive_int("window", value)
    assert check_chunk_size(16) == 16


def test_check_gate_shape_and_sign() -> None:
    g = -torch.rand(2, 5, 4, 8)
    check_gate("gla", "g", g, (2, 5, 4, 8), log_space=True)
    with pytest.raises(ValueError, match=r"g must have shape \[2, 5, 4, 8\], got \[2, 5, 4\]"):
        check_gate("gla", "g", g[..., 0], (2, 5, 4, 8), log_space=True)
    with pytest.raises(ValueError, match="log-space forget gate and must be <= 0"):
        check_gate("gla", "g", g.abs() + 0.1, (2, 5, 4, 8), log_space=True)
    check_gate("op", "beta", g.abs(), (2, 5, 4, 8), log_space=False)


def test_value_checks_skipped_only_inside_trusted_values() -> None:
    positive = torch.full((1, 3, 2), 0.5)
    assert check_values()
    with trusted_values():
        assert not check_values()
        check_gate("gla", "g", positive, (1, 3, 2), log_space=True)  # the value is not read
        with pytest.raises(ValueError, match="must have shape"):  # shapes still are
            check_gate("gla", "g", positive, (1, 3, 3), log_space=True)
        with pytest.raises(RuntimeError, match="inner"), trusted_values():
            raise RuntimeError("inner")
        assert not check_values()  # the inner block's exit restored the outer one's setting
    assert check_values()
    with pytest.raises(ValueError, match="log-space forget gate"):
        check_gate("gla", "g", positive, (1, 3, 2), log_space=True)


def test_check_state() -> None:
    check_state("op", "initial_state", torch.zeros(2, 4, 8, 6), (2, 4, 8, 6))
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 4, 8, 6\], got \[2, 4, 6, 8\]"):
        check_state("op", "initial_state", torch.zeros(2, 4, 6, 8), (2, 4, 8, 6))


def test_default_scale() -> None:
    assert default_scale(None, 64) == 0.125
    assert default_scale(0.5, 64) == 0.5


@pytest.mark.parametrize("T, multiple, expected", [(5, 4, 8), (8, 4, 8), (1, 16, 16)])
def test_pad_to_multiple(T: int, multiple: int, expected: int) -> None:
    x = torch.randn(2, T, 3, 4)
    padded, pad = pad_to_multiple(x, multiple, dim=1)
    assert padded.shape == (2, expected, 3, 4) and pad == expected - T
    assert torch.equal(padded[:, :T], x) and (padded[:, T:] == 0).all()

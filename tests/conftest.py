"""Test-wide fixtures.

``torch.empty`` / ``empty_like`` are wrapped to fill floating tensors with NaN, so an op that
reads memory it never wrote shows NaN instead of passing by luck (the flash-linear-attention
habit).

Parametrized torch dtypes take their names as test ids (``[bfloat16-size1]``, not
``[dtype1-size1]``), so ``pytest -k bfloat16`` selects them: on a GPU machine the kernel tests are
split over processes by dtype and size that way (``benchmarks/scripts/session_device.sh``).
"""

from __future__ import annotations

import pytest
import torch


def pytest_make_parametrize_id(config, val, argname):
    """A torch dtype's id: its name (``torch.bfloat16`` -> ``bfloat16``); others: pytest's own."""
    if isinstance(val, torch.dtype):
        return str(val).removeprefix("torch.")
    return None


_empty = torch.empty
_empty_like = torch.empty_like


def _nan_empty(*args, **kwargs):
    t = _empty(*args, **kwargs)
    # a leaf that requires grad cannot be filled in place (torch.utils.checkpoint makes one)
    if (t.is_floating_point() or t.is_complex()) and not t.requires_grad:
        t.fill_(float("nan"))
    return t


def _nan_empty_like(*args, **kwargs):
    t = _empty_like(*args, **kwargs)
    if (t.is_floating_point() or t.is_complex()) and not t.requires_grad:
        t.fill_(float("nan"))
    return t


@pytest.fixture(autouse=True)
def nan_filled_empty(monkeypatch):
    monkeypatch.setattr(torch, "empty", _nan_empty)
    monkeypatch.setattr(torch, "empty_like", _nan_empty_like)
    yield


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Fixed seed; one torch thread: the tests use tiny tensors, for which several threads only add
    synchronisation (measured 50-100x slower on a busy 2-core machine)."""
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

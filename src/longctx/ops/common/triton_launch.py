"""Launch settings (``num_warps``, ``num_stages``) of the Triton kernels, one place to change them.

Every chunked kernel is launched with ``**launch_options("<op>.<kernel>", num_warps=..., ...)``: the
defaults written at the call site, unless ``OVERRIDES`` names the kernel. A tuning sweep
(``benchmarks/scripts/tune_kernels.py``) sets ``OVERRIDES`` through ``launch_overrides`` and times
the op; the results cannot change (the settings only schedule the same arithmetic), and the tests
check that.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

OVERRIDES: dict[str, dict[str, int]] = {}

_SETTINGS = ("num_warps", "num_stages")


def launch_options(kernel: str, **defaults: int) -> dict[str, int]:
    """The launch keyword arguments of ``kernel``: ``defaults`` updated by ``OVERRIDES[kernel]``."""
    return {**defaults, **OVERRIDES.get(kernel, {})}


@contextmanager
def launch_overrides(settings: dict[str, dict[str, int]]) -> Iterator[None]:
    """Launch the named kernels with other settings inside the block, e.g.
    ``launch_overrides({"gla.fwd_h": {"num_warps": 8}})``."""
    for kernel, opts in settings.items():
        bad = set(opts) - set(_SETTINGS)
        if bad:
            raise ValueError(f"launch_overrides: {kernel}: unknown setting(s) {sorted(bad)}; "
                             f"expected any of {_SETTINGS}")
    saved = dict(OVERRIDES)
    OVERRIDES.update(settings)
    try:
        yield
    finally:
        OVERRIDES.clear()
        OVERRIDES.update(saved)

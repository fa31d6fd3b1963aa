"""Launch settings of the Triton kernels (``num_warps``, ``num_stages``, and for the kernels that
pass them through here their tiles ``BK`` / ``BV``), one place to change them.

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
# tiles a kernel may take through launch_options (its call site sizes the grid from them); the
# state passes' tiles are free (each (BK, BV) block of the state is independent)
TILED: dict[str, tuple[str, ...]] = {k: ("BK", "BV") for k in (
    "gla.fwd_h", "gla.bwd_dh", "scalar_decay.fwd_h", "scalar_decay.bwd_dh", "scalar_decay.fwd_h_group")}
# the scalar-decay inference forward's output pass: its value tile and GS, the chunks per group
# (GS = 1: the per-chunk kernels). Unlike the other settings, GS changes the order in which the
# state is summed (per group, then over groups): results agree to rounding, not to the bit
TILED["scalar_decay.fwd_grouped"] = TILED["gla.fwd_grouped"] = TILED["scalar_decay.fwd_lookback"] = ("BV", "GS")
# which of the delta-rule backward state pass's products take fp32 operands (bits 1 | 2 | 4, see
# triton_delta.HALF_DH_F32_DOTS): 0 reproduces its bf16 fault at K > 64 on Hopper; and its value
# tile, as the forward state pass's below
TILED["delta.delta_dh"] = ("F32_DOTS", "BV")
# the forward state passes whose BV may reach 128: one program per key block reads its K and gates
# once instead of V / BV times (GLA's fp32 gates are twice K's bytes), at a quarter of the programs;
# and GLA's output pass (BV only: V's columns), whose programs each read the chunk's Q and gates
TILED["gla.fwd_o"] = ("BV",)
# the delta rule's output pass likewise (BV only; at 128 each chunk's Q K^T is formed once)
TILED["delta.fwd_o"] = ("BV",)
# and the scalar-decay grouped output pass (BV is the N of all its products; at 128 each group's Q
# and K are read once, not twice)
WIDE_BV = ("gla.fwd_h", "scalar_decay.fwd_h", "gla.fwd_o", "delta.fwd_o", "scalar_decay.fwd_grouped",
           "scalar_decay.fwd_h_group", "scalar_decay.fwd_lookback")
# the delta rule's forward state pass: its value tile alone (its key pieces are fixed at 64 rows),
# from 16 (twice the programs of the default 32 at K = 128) up
TILED["delta.delta_h"] = ("BV",)
# GLA's intra-chunk scores by levels of pairs (triton_gla.SCORES_BY_LEVELS): the key block of its
# [BT, BK] gate tiles (BK 64 at 8 warps: 255 registers)
TILED["gla.fwd_A_levels"] = ("BK",)
# the backward's dq / dk by levels of pairs (triton_gla.DQK_BY_LEVELS): its key block, as the scores'
TILED["gla.bwd_dqk_levels"] = ("BK",)
# log-linear (Gated) DeltaNet's level walks (inference; training forward and reverse): their value
# tile, and their segments, at least SPAN chunks of whole blocks each (0: one walk per level;
# triton_log_linear.walk_segments). Each program walks its chunks reading each one's W, K and Q̃
# (48 KB in bf16 at K = 128) whatever its BV: M x V / BV programs read them M x V / BV times (at the
# default BV 32, 40 times each at 64k), where a wider tile reads them fewer times with fewer programs
_DELTA_WALKS = ("log_linear.delta_levels", "log_linear.delta_train_fwd", "log_linear.delta_train_dh")
TILED.update(dict.fromkeys(_DELTA_WALKS, ("BV", "SPAN")))
WIDE_BV += _DELTA_WALKS
# log-linear's inference level pass: chunks per group (GS; any power of two >= 2 gives the same
# states to rounding) and its state tile
TILED["log_linear.fwd_z_group"] = ("GS", "BK", "BV")
# its backward's reverse level walk: segments of at least SPAN chunks (triton_log_linear.WALK_SPAN)
TILED["log_linear.bwd_dz_compact"] = ("SPAN",)


def launch_options(kernel: str, **defaults: int) -> dict[str, int]:
    """The launch keyword arguments of ``kernel``: ``defaults`` updated by ``OVERRIDES[kernel]``."""
    return {**defaults, **OVERRIDES.get(kernel, {})}


@contextmanager
def launch_overrides(settings: dict[str, dict[str, int]]) -> Iterator[None]:
    """Launch the named kernels with other settings inside the block, e.g.
    ``launch_overrides({"gla.fwd_h": {"num_warps": 8}})``. Nested blocks add to an outer block's
    settings of the same kernel (the inner one wins where both set one)."""
    for kernel, opts in settings.items():
        allowed = _SETTINGS + TILED.get(kernel, ())
        bad = set(opts) - set(allowed)
        if bad:
            raise ValueError(f"launch_overrides: {kernel}: unknown setting(s) {sorted(bad)}; "
                             f"expected any of {allowed}")
        for tile in set(opts) & {"BK", "BV"}:
            n, top = opts[tile], 128 if tile == "BV" and kernel in WIDE_BV else 64
            if not isinstance(n, int) or n < 16 or n > top or n & (n - 1):
                # <= 64: these passes feed K^T / Q^T, loaded through transposed strides, to tl.dot
                # as its A operand; over 64 rows that tile was miscompiled on Hopper (Triton 3.6,
                # tests/ops/hopper_codegen.py). BV of the forward state passes is the product's N
                # (V's columns), never such an operand: up to 128 there
                raise ValueError(f"launch_overrides: {kernel}: {tile} must be a power of two from 16 "
                                 f"(tl.dot's smallest tile) to {top}, got {n!r}")
    saved = dict(OVERRIDES)
    OVERRIDES.update({kernel: {**saved.get(kernel, {}), **opts} for kernel, opts in settings.items()})
    try:
        yield
    finally:
        OVERRIDES.clear()
        OVERRIDES.update(saved)

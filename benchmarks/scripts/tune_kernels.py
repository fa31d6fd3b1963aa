"""Sweep the Triton kernels' launch settings (num_warps x num_stages, and the state passes' tiles
BK x BV) on the GPU, one kernel at a time with the others at their defaults, timing the whole op (forward for forward kernels,
forward+backward for backward ones) with `triton.testing.do_bench`, B=1 H=16 D=128 bf16 as the
kernel bench. Each setting's output must equal the default's (the settings only schedule the same
arithmetic; the grouped forward's GS also reorders the state's sums, so it agrees to rounding): a
mismatch is reported, not ignored.

    python benchmarks/scripts/tune_kernels.py OUT.json [op ...] [--T 4096] [--kernels k1,k2]

Writes every row to OUT.json as it goes (atomically), then prints each kernel's best setting
and the range of times over the settings. The defaults live at the call sites (`launch_options` in
src/longctx/ops/common/triton_*.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import os
import sys

import torch

KERNELS = {  # op -> (kernel name, backward?) in launch order
    "gla": [("gla.fwd_h", 0), ("gla.fwd_A", 0), ("gla.fwd_o", 0), ("gla.fwd_grouped", 0),
            ("gla.bwd_dh", 1), ("gla.bwd_dv_dA", 1), ("gla.bwd_dqk", 1)],
    "simple_gla": [("scalar_decay.fwd_h", 0), ("scalar_decay.fwd_o", 0), ("scalar_decay.fwd_grouped", 0),
                   ("scalar_decay.fwd_h_group", 0), ("scalar_decay.fwd_lookback", 0),
                   ("scalar_decay.bwd_dh", 1), ("scalar_decay.bwd_dqkv", 1)],
    "gated_deltanet": [("delta.wy_fwd", 0), ("delta.delta_h", 0), ("delta.fwd_o", 0),
                       ("delta.delta_dh", 1), ("delta.delta_dqk", 1), ("delta.wy_bwd", 1), ("delta.dg", 1)],
    "deltanet": [("delta.wy_fwd", 0), ("delta.delta_h", 0), ("delta.fwd_o", 0),
                 ("delta.delta_dh", 1), ("delta.delta_dqk", 1), ("delta.wy_bwd", 1)],
    "linear_attention": [("scalar_decay.fwd_h", 0), ("scalar_decay.fwd_o", 0), ("scalar_decay.fwd_grouped", 0),
                         ("scalar_decay.fwd_h_group", 0), ("scalar_decay.fwd_lookback", 0),
                         ("scalar_decay.bwd_dh", 1), ("scalar_decay.bwd_dqkv", 1)],
    "log_linear": [("log_linear.fwd_z", 0), ("log_linear.fwd_z_group", 0), ("log_linear.fwd_o", 0),
                   ("log_linear.bwd_dz", 1), ("log_linear.bwd_dz_compact", 1), ("log_linear.bwd_dqkv", 1)],
    "log_linear_gdn": [("log_linear.delta_levels", 0), ("log_linear.delta_train_fwd", 1),
                       ("log_linear.delta_train_dh", 1)],
}
SETTINGS = [{"num_warps": w, "num_stages": s} for w, s in itertools.product((2, 4, 8), (1, 2, 3))]
# kernels whose tiles are settings too (triton_launch.TILED): fewer warp / stage pairs, x 4 tiles
TILE_SETTINGS = [{"num_warps": w, "num_stages": s, "BK": bk, "BV": bv} for w, s, (bk, bv) in
                 itertools.product((2, 4), (2, 3), ((64, 64), (64, 32), (32, 64), (32, 32)))]
# the forward state passes also at BV = 128 (triton_launch.WIDE_BV): K and the gates read once per
# key block; 4 and 8 warps (a [64, 128] fp32 state is 64 registers a thread at 4)
# kernels whose only tile is BV (GLA's output pass): BV 32 / 64 / 128 x warps x stages
BV_SETTINGS = [{"num_warps": w, "num_stages": st, "BV": bv} for w, st, bv in
               itertools.product((4, 8), (2, 3), (32, 64, 128))]
# the delta rule's forward state pass: BV 16 / 32 / 64 (S in [64, BV] pieces; 16 doubles its
# programs at B = 1), 2 / 4 warps, 2 / 3 stages
DELTA_H_SETTINGS = [{"num_warps": w, "num_stages": st, "BV": bv} for w, st, bv in
                    itertools.product((2, 4), (2, 3), (16, 32, 64))]
WIDE_SETTINGS = TILE_SETTINGS + [{"num_warps": w, "num_stages": s, "BK": bk, "BV": 128} for w, s, bk in
                                 itertools.product((4, 8), (2, 3), (32, 64))]
# the inference forward's output pass: chunks per group (1 = the per-chunk kernels) x its tile
# (2026-12-07, H100, T = 64k: w4 s2 was the best at every GS, so only GS is swept)
GROUPED_SETTINGS = [{"num_warps": 4, "num_stages": 2, "BV": 64, "GS": gs} for gs in (1, 2, 4, 8, 16)]
# the scalar-decay one also at BV = 128 (each group's Q and K read once; ptxas: 8 warps, 72 B spilled)
WIDE_GROUPED_SETTINGS = GROUPED_SETTINGS + [{"num_warps": 8, "num_stages": st, "BV": 128, "GS": gs}
                                            for st, gs in itertools.product((2, 3), (8, 16))]
# kernels with a sweep of their own
OWN_SETTINGS = {
    # the one-launch inference forward (triton_scalar_decay.LOOKBACK_FORWARD, swept with the flag on):
    # chunks per group x its value tile x warps x stages (ptxas: 4 warps at BV 64, 2 stages spill 76 B)
    "scalar_decay.fwd_lookback": [{"num_warps": w, "num_stages": st, "BV": bv, "GS": gs} for w, st, bv, gs in
                                  itertools.product((4, 8), (1, 2), (64, 128), (8, 16, 32))],
    # log-linear's grouped level pass: its [LP, BK, BV] level tile (64 x 64 spills at 4 warps, ptxas)
    # and chunks per group
    "log_linear.fwd_z_group": [{"num_warps": w, "num_stages": 1, "BK": bk, "BV": bv, "GS": gs}
                               for w, (bk, bv), gs in itertools.product((4, 8), ((64, 64), (32, 64), (32, 32)),
                                                                        (8, 16))],
    # the level walks' segments (SPAN chunks of whole blocks; 0: one walk per level) and log-linear
    # (Gated) DeltaNet's walks' value tile, at the settings ptxas assembles without spills (sm_90a,
    # K = V = 128, bf16; 2026-12-08)
    "log_linear.bwd_dz_compact": [{"num_warps": w, "num_stages": st, "SPAN": sp}
                                  for (w, st), sp in itertools.product(((4, 2), (8, 2)), (0, 16, 64))],
    "log_linear.delta_levels": [{"num_warps": w, "num_stages": st, "BV": bv, "SPAN": sp}
                                for (w, st, bv), sp in itertools.product(((4, 3, 32), (8, 2, 64), (8, 1, 128)),
                                                                         (0, 16, 64))],
    "log_linear.delta_train_fwd": [{"num_warps": w, "num_stages": st, "BV": bv, "SPAN": sp}
                                   for (w, st, bv), sp in itertools.product(
                                       ((4, 1, 32), (8, 2, 64), (8, 1, 128), (8, 2, 128)), (0, 64))],
    "log_linear.delta_train_dh": [{"num_warps": w, "num_stages": st, "BV": bv, "SPAN": sp}
                                  for (w, st, bv), sp in itertools.product(((4, 1, 32), (4, 1, 64), (4, 2, 64)),
                                                                           (0, 64))],
}
# kernels that run only with a flag on: swept (and their reference taken) with it on
FLAG_OF = {"scalar_decay.fwd_lookback": ("longctx.ops.common.triton_scalar_decay", "LOOKBACK_FORWARD")}
# settings not tried, and why: a fault poisons the process for every later row
SKIP = {("delta.delta_dh", 8): "illegal memory access on the H100 under 2 of 4 variants at num_warps 8 "
                               "(bisect_delta_bwd.py, 2026-12-06, reproduced)"}


def _sweep(kernel: str, tiled: dict, wide: tuple) -> list[dict]:
    """The settings swept for ``kernel``: GS for the grouped forwards; the tiles it takes
    (triton_launch.TILED: BV only, or BK and BV, BV up to 128 for triton_launch.WIDE_BV) with warps
    and stages; else warps and stages alone (a kernel whose other TILED setting, e.g. the delta
    rule's F32_DOTS, is not a launch choice)."""
    tiles = set(tiled.get(kernel, ())) & {"BK", "BV"}
    if kernel in OWN_SETTINGS:
        return OWN_SETTINGS[kernel]
    if kernel.endswith(".fwd_grouped"):
        return WIDE_GROUPED_SETTINGS if kernel in wide else GROUPED_SETTINGS
    if kernel in ("delta.delta_h", "delta.delta_dh"):  # (the backward's F32_DOTS: not a choice)
        return DELTA_H_SETTINGS
    if tiles == {"BV"}:
        return BV_SETTINGS
    if tiles:
        return WIDE_SETTINGS if kernel in wide else TILE_SETTINGS
    return SETTINGS


def _run(op: str, T: int, backward: bool):
    from longctx.bench.kernels import _inputs, _ours

    fn = _ours(op)
    ins = _inputs(op, 1, T, 16, 128, torch.bfloat16, seed=0)
    if not backward:  # as the kernel bench times forwards: no autograd graph
        def forward() -> tuple:
            with torch.no_grad():
                return (fn(*ins),)
        return forward
    diff = [t.requires_grad_() for t in ins if t.is_floating_point() and t.dim() >= 3]
    do = torch.randn_like(fn(*ins))
    return lambda: torch.autograd.grad(fn(*ins), diff, do, allow_unused=True)


@contextlib.contextmanager
def _flag_on(kernel: str):
    """``kernel``'s flag (FLAG_OF) on inside the block, if it has one."""
    if kernel not in FLAG_OF:
        yield
        return
    mod, attr = FLAG_OF[kernel]
    module = importlib.import_module(mod)
    saved = getattr(module, attr)
    setattr(module, attr, True)
    try:
        yield
    finally:
        setattr(module, attr, saved)


def _sweep_kernel(op, T, kernel, backward, rows, out, tiled, wide, launch_overrides) -> None:
    """Time ``op`` at every setting of ``kernel`` (``_sweep``), each row appended to rows and OUT."""
    import triton.testing

    run = _run(op, T, backward)
    ref = [t.float() for t in run() if t is not None]
    for s in _sweep(kernel, tiled, wide):
        row = {"op": op, "T": T, "kernel": kernel, **s}
        if (kernel, s["num_warps"]) in SKIP:
            row["error"] = "skipped: " + SKIP[kernel, s["num_warps"]]
            rows.append(row)
            continue
        try:
            with launch_overrides({kernel: s}):
                got = [t.float() for t in run() if t is not None]
                row["ms"] = float(triton.testing.do_bench(run, warmup=10, rep=50, return_mode="median"))
            row["max_diff"] = max(float((x - y).abs().max()) for x, y in zip(got, ref))
            # relative to the largest reference value (bf16 rounding: ~4e-3)
            row["rel_diff"] = max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-30))
                                  for x, y in zip(got, ref))
        except Exception as e:  # noqa: BLE001 - a setting that fails to compile is a result
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(out + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(out + ".tmp", out)


def main() -> None:
    from longctx.ops.common.triton_launch import TILED, WIDE_BV, launch_overrides

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("ops", nargs="*", default=list(KERNELS))
    p.add_argument("--T", type=int, nargs="+", default=[4096], help="sequence lengths, each swept")
    p.add_argument("--kernels", default="", help="only these kernels, e.g. scalar_decay.fwd_grouped")
    a = p.parse_args()
    only = {k for k in a.kernels.split(",") if k}
    rows: list[dict] = []
    for op, T in itertools.product(a.ops, a.T):
        for kernel, bwd in KERNELS[op]:
            if only and kernel not in only:
                continue
            with _flag_on(kernel):
                _sweep_kernel(op, T, kernel, bool(bwd), rows, a.out, TILED, WIDE_BV, launch_overrides)
    print(f"{'op':17} {'T':>6} {'kernel':24} {'best':>10} {'ms':>9}")
    for op, T, kernel in dict.fromkeys((r["op"], r["T"], r["kernel"]) for r in rows):
        ok = [r for r in rows if (r["op"], r["T"], r["kernel"]) == (op, T, kernel) and "ms" in r]
        if not ok:
            continue
        best = min(ok, key=lambda r: r["ms"])
        tiles = "".join(f" {t}{best[t]}" for t in ("BK", "BV", "GS", "SPAN") if t in best)
        print(f"{op:17} {T:6} {kernel:24} w{best['num_warps']} s{best['num_stages']}{tiles:<12} {best['ms']:9.3f}"
              f"  (range {min(r['ms'] for r in ok):.3f}-{max(r['ms'] for r in ok):.3f})")


if __name__ == "__main__":
    sys.exit(main())

"""The kernel flags that wait for a GPU, each timed off and on in one process on the same inputs,
with the largest difference of the outputs: the evidence to turn one on (or leave it off).

    python benchmarks/scripts/flag_ab.py OUT.json [--T 4096 16384 65536] [--flags a,b]

Flags (module attribute -> the ops it changes, forward only unless noted):
  gate_on_delta     triton_scalar_decay.GATE_ON_DELTA: gated_deltanet (forward; forward+backward,
                    whose training forward takes it too), simple_gla (its grouped inference forward)
  fused_delta       ops/log_linear/triton.FUSED_DELTA_LEVELS: log_linear_gdn
  grouped_levels    triton_log_linear.GROUPED_LEVELS: log_linear (forward; forward+backward)
  scores_by_levels  triton_gla.SCORES_BY_LEVELS: gla (forward; forward+backward: the same scores)
  vector_inverse    triton_delta.VECTOR_DIAG_INVERSE: gated_deltanet, deltanet (forward; forward+backward),
                    log_linear_gdn (the UT transform's inverse)
  half_wu           triton_delta.HALF_WU: as vector_inverse (the UT transform's W and U)
  cumsum_in_kernels triton_gla.CUMSUM_IN_KERNELS: gla (forward; forward+backward)
  dqk_by_levels     triton_gla.DQK_BY_LEVELS: gla (forward+backward)
  dh_intra_outside  triton_delta.DH_INTRA_OUTSIDE: deltanet, gated_deltanet (forward+backward)
  fused_delta_training  ops/log_linear/triton.FUSED_DELTA_TRAINING: log_linear_gdn (forward+backward)
  lookback_forward  triton_scalar_decay.LOOKBACK_FORWARD: linear_attention, simple_gla (the inference
                    forward in one launch)
``--flags a+b`` sets a combination together (off: all off; on: all on) on the union of their ops.
The kernel bench's inputs (B=1 H=16 D=128 bf16); ms, the median of ``triton.testing.do_bench``.
Run the flags' GPU tests first (they are parametrised over each flag). Without a GPU: one
host-timed call each in Triton's interpreter (a smoke run, tiny sizes).
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import torch
from log_linear_gdn_parts import (  # this folder's: its timing and set-up
    _bench,
    _interpreter_without_cuda,
)

from longctx.bench.ops import _write_json

FLAGS = {  # name -> (module, attribute, [(op, backward)])
    "gate_on_delta": ("longctx.ops.common.triton_scalar_decay", "GATE_ON_DELTA",
                      [("gated_deltanet", False), ("gated_deltanet", True), ("simple_gla", False)]),
    "fused_delta": ("longctx.ops.log_linear.triton", "FUSED_DELTA_LEVELS", [("log_linear_gdn", False)]),
    "grouped_levels": ("longctx.ops.common.triton_log_linear", "GROUPED_LEVELS",
                       [("log_linear", False), ("log_linear", True)]),
    "scores_by_levels": ("longctx.ops.common.triton_gla", "SCORES_BY_LEVELS", [("gla", False), ("gla", True)]),
    "cumsum_in_kernels": ("longctx.ops.common.triton_gla", "CUMSUM_IN_KERNELS", [("gla", False), ("gla", True)]),
    "dh_intra_outside": ("longctx.ops.common.triton_delta", "DH_INTRA_OUTSIDE",
                         [("deltanet", True), ("gated_deltanet", True)]),
    "dqk_by_levels": ("longctx.ops.common.triton_gla", "DQK_BY_LEVELS", [("gla", True)]),
    "fused_delta_training": ("longctx.ops.log_linear.triton", "FUSED_DELTA_TRAINING", [("log_linear_gdn", True)]),
    "lookback_forward": ("longctx.ops.common.triton_scalar_decay", "LOOKBACK_FORWARD",
                         [("linear_attention", False), ("simple_gla", False)]),
    **{name: ("longctx.ops.common.triton_delta", attr,
              [("gated_deltanet", False), ("gated_deltanet", True), ("deltanet", False), ("log_linear_gdn", False)])
       for name, attr in (("vector_inverse", "VECTOR_DIAG_INVERSE"), ("half_wu", "HALF_WU"))},
}


def _case(flag: str, op: str, backward: bool, T: int, H: int, D: int, cuda: bool) -> dict:
    from longctx.bench.kernels import _inputs, _ours

    settings = [(importlib.import_module(FLAGS[f][0]), FLAGS[f][1]) for f in flag.split("+")]
    dtype = torch.bfloat16 if cuda else torch.float64
    ins = _inputs(op, 1, T, H, D, dtype, seed=T, device="cuda" if cuda else "cpu")
    fn = _ours(op)
    if backward:
        diff = [t.requires_grad_() for t in ins if t.is_floating_point() and t.dim() >= 3]
        do = torch.randn_like(fn(*ins))

        def run() -> object:
            return torch.autograd.grad(fn(*ins), diff, do, allow_unused=True)
    else:
        def run() -> object:
            with torch.no_grad():
                return (fn(*ins),)
    row: dict = {"flag": flag, "op": op, "T": T, "backward": backward}
    outs = {}
    saved = [getattr(mod, attr) for mod, attr in settings]
    try:
        for on in (False, True):
            for mod, attr in settings:
                setattr(mod, attr, on)
            key = "on" if on else "off"
            try:
                outs[key] = [o for o in run() if o is not None]
                row[key] = _bench(run, cuda)
            except Exception as e:  # noqa: BLE001 - a failing setting is reported, the others still run
                row[key] = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        for (mod, attr), value in zip(settings, saved, strict=True):
            setattr(mod, attr, value)
    if len(outs) == 2:  # the largest difference relative to each output's largest entry
        row["max_rel_diff"] = max(float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))
                                  for a, b in zip(outs["on"], outs["off"], strict=True))
    if isinstance(row.get("off"), float) and isinstance(row.get("on"), float):
        row["speedup"] = row["off"] / row["on"]
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--T", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--flags", default=",".join(FLAGS))
    args = ap.parse_args()
    cuda = _interpreter_without_cuda()
    res: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu (interpreter smoke run)",
                 "rows": []}
    for T in args.T:
        for flag in args.flags.split(","):
            ops = dict.fromkeys(case for f in flag.split("+") for case in FLAGS[f][2])  # a combination's: every part's
            for op, backward in ops:
                res["rows"].append(_case(flag, op, backward, T, args.H, args.D, cuda))
                _write_json(res, Path(args.out))
                if cuda:
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which delta-rule backward kernel is wrong in bf16 for K > 64 (2026-12-07: the GPU tests' dk / dv
at K = 128 / 256 had relative errors 0.2-1.0 in bf16 while float32 passed and K = 64 passed).

One case per process (argv: OUT.json GATED K T STATES): the op's forward + backward on the same
inputs twice, bf16 and float32 (the bf16 values, widened), with every output of every backward
kernel recorded (dh, dvn, dh0 of ``_delta_dh_kernel``; dq, dkp, dw of ``_delta_dqk_kernel``; dk,
dv, dbeta of ``_wy_bwd_kernel``; dg of ``_delta_dg_kernel``). Each is printed as its relative RMS
difference bf16 vs float32: bf16 rounding gives ~1e-2; the first kernel in launch order with a
difference near 1 is the broken one (the kernels after it read its outputs).

    python benchmarks/scripts/bisect_delta_grads.py OUT.json 0 128 1000 1 [VARIANT ...]

Each VARIANT reruns the bf16 case changed one way: ``ieee`` (or ``tf32x3``) the precision of the
accumulation-dtype dots (``_preca``: TF32 for half inputs; float32 inputs run IEEE FMA loops), or
``KERNEL:SETTING=N`` a launch setting (``delta.delta_dqk:num_warps=4``: at K = 128 that kernel runs
8 warps, two warpgroups splitting its TF32 dW product's N = 128 columns; at K = 64 it runs 4).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # a check of the script in Triton's interpreter (float16 for bf16)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    import tests.ops.triton_support  # noqa: F401
from longctx.ops.common import triton_delta as td
from longctx.ops.common.triton_delta import delta_rule_chunk
from longctx.ops.common.triton_launch import launch_overrides

DEV = "cuda" if torch.cuda.is_available() else "cpu"
HALF = torch.bfloat16 if DEV == "cuda" else torch.float16

OUTPUTS = {"_delta_dh_kernel": ("dh", "dvn", "dh0"), "_delta_dqk_kernel": ("dq", "dkp", "dw"),
           "_wy_bwd_kernel": ("dk", "dv", "dbeta"), "_delta_dg_kernel": ("dg",)}


class _Recorded:
    """A kernel whose launches also copy its output arguments into ``record``."""

    def __init__(self, kernel, names: tuple[str, ...], record: dict) -> None:
        self.kernel, self.names, self.record = kernel, names, record

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.kernel[grid](*args, **kw)
            for n in self.names:
                t = args[self.kernel.arg_names.index(n)]
                if t.dim() >= 2:  # a dummy pointer (an unused output) is some other 1-d-or-more tensor
                    self.record[f"{self.kernel.__name__}.{n}"] = t.float().clone()
        return launch


def run(dtype: torch.dtype, gated: bool, K: int, T: int, states: bool, seed: int = 0,
        variant: str | None = None) -> dict:
    gen = torch.Generator().manual_seed(seed)
    H, V = (4, 128) if DEV == "cuda" else (1, 16)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = rand(1, T, H, K), F.normalize(rand(1, T, H, K), dim=-1), rand(1, T, H, V)
    beta, g, S0 = 2 * torch.sigmoid(rand(1, T, H)), F.logsigmoid(rand(1, T, H)), rand(1, H, K, V)
    ins = [t.to(HALF).to(dtype).to(DEV).requires_grad_() for t in (q, k, v)]
    beta_, g_ = beta.float().to(DEV).requires_grad_(), g.float().to(DEV).requires_grad_()
    S0_ = S0.float().to(DEV).requires_grad_()
    record: dict = {}
    saved = {name: getattr(td, name) for name in (*OUTPUTS, "_preca")}
    for name, outs in OUTPUTS.items():
        setattr(td, name, _Recorded(saved[name], outs, record))
    launch: dict = {}
    if variant is not None and ":" in variant:  # KERNEL:SETTING=N
        kernel, setting = variant.split(":")
        launch = {kernel: {setting.split("=")[0]: int(setting.split("=")[1])}}
    elif variant is not None:
        td._preca = lambda _dtype: variant
    try:
        with launch_overrides(launch):
            o, S = delta_rule_chunk(*ins, beta_, g_ if gated else None, scale=K ** -0.5,
                                    initial_state=S0_ if states else None, output_final_state=states)
        loss = (o.float() * torch.randn(o.shape, generator=gen).to(DEV)).sum()
        if states:
            loss = loss + (S * torch.randn(S.shape, generator=gen).to(DEV)).sum()
        with launch_overrides(launch):
            loss.backward()
        if DEV == "cuda":
            torch.cuda.synchronize()
    finally:
        for name, kernel in saved.items():
            setattr(td, name, kernel)
    record["o"] = o.float().detach()
    return record


def main() -> None:
    out, gated, K, T, states = sys.argv[1], bool(int(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4]), bool(int(sys.argv[5]))
    full = run(torch.float32, gated, K, T, states)
    case = f"{'gated' if gated else 'ungated'} K={K} T={T} states={int(states)}"
    rows: dict = {}
    for variant in [None, *sys.argv[6:]]:
        half = run(HALF, gated, K, T, states, variant=variant)
        tag = f"bf16{'' if variant is None else ' ' + variant} vs fp32"
        for name, x in half.items():
            y = full[name]
            rows.setdefault(tag, {})[name] = err = float((x - y).norm() / y.norm().clamp_min(1e-30))
            print(f"{case:34} {name:28} {tag} {err:.3e}", flush=True)
    with open(out, "w") as f:
        json.dump({case: rows}, f, indent=1)


if __name__ == "__main__":
    main()

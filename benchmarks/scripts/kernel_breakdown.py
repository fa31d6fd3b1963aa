"""Where an op's GPU time goes: the CUDA time of every kernel one call launches, ours vs fla's, from
``torch.profiler`` (B=1 H=16 D=128 bf16, the kernel bench's inputs). The kernel bench gives the
totals (our GLA forward 2.2x fla's at 4k, 2026-12-06); this says which kernel makes the gap.

    python benchmarks/scripts/kernel_breakdown.py OUT.json [op ...] [--T 4096] [--backward]

For each op and library: a warm-up call (compiles), then ``--calls`` profiled calls; per kernel
name the mean CUDA microseconds per call and its share of the op's kernel time. Writes OUT.json
(atomically, after every op) and prints a table. Needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Callable

import torch


def _call(fn: Callable, inputs: list[torch.Tensor], backward: bool) -> Callable[[], object]:
    if not backward:
        def forward() -> object:
            with torch.no_grad():
                return fn(*inputs)
        return forward
    diff = [t.requires_grad_() for t in inputs if t.is_floating_point() and t.dim() >= 3]
    do = torch.randn_like(fn(*inputs))
    return lambda: torch.autograd.grad(fn(*inputs), diff, do, allow_unused=True)


def kernel_times(run: Callable[[], object], calls: int) -> dict[str, float]:
    """Mean CUDA microseconds per call of each kernel ``run`` launches (by kernel name)."""
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    total: dict[str, float] = defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            total[e.name] += e.time_range.elapsed_us()  # a kernel's own interval on the device
    return {name: us / calls for name, us in sorted(total.items(), key=lambda kv: -kv[1])}


def main() -> int:
    from longctx.bench.kernels import _fla, _inputs, _ours

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("ops", nargs="*", default=["gla", "simple_gla", "gated_deltanet"])
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--backward", action="store_true", help="profile forward+backward")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("kernel_breakdown.py needs a GPU", file=sys.stderr)
        return 2
    rows = []
    for op in a.ops:
        for lib, get in (("ours", _ours), ("fla", _fla)):
            fn = get(op)
            row = {"op": op, "lib": lib, "T": a.T, "backward": a.backward}
            if fn is None:
                continue
            try:
                ins = _inputs(op, 1, a.T, 16, 128, torch.bfloat16, seed=0)
                row["kernels_us"] = kernel_times(_call(fn, ins, a.backward), a.calls)
                row["total_us"] = sum(row["kernels_us"].values())
            except Exception as e:  # noqa: BLE001 - fla refusing (or failing) is a result
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            rows.append(row)
            with open(a.out + ".tmp", "w") as f:
                json.dump(rows, f, indent=1)
            os.replace(a.out + ".tmp", a.out)
            print(f"== {op} / {lib} (T={a.T}{', fwd+bwd' if a.backward else ', fwd'}): "
                  f"{row.get('total_us', float('nan')):.1f} us {row.get('error', '')}", flush=True)
            for name, us in row.get("kernels_us", {}).items():
                print(f"  {us:9.1f} us {100 * us / row['total_us']:5.1f} %  {name[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the gate on Delta's rows goes wrong in half precision on a GPU (session 19: log-linear
Gated DeltaNet's fused level walk, bf16, K = 128, V = 64, relative error 0.217 with
``triton_log_linear_delta.LEVELS_GATE_ON_DELTA``; the gate on K^T passes).

    python benchmarks/scripts/bisect_gate_on_delta.py OUT.json

For each shape and dtype: the fused inference forward with the level walk's gate on K^T or on
Delta, at 1 / 2 / 3 pipeline stages (``log_linear.delta_levels``), and Gated DeltaNet's own
forward (``chunk_gated_delta_rule``, whose state pass shares ``_pieces_out``) with
``triton_scalar_decay.GATE_ON_DELTA`` off / on: each output's largest error relative to the
float64 reference's largest value. Without a GPU the interpreter runs one small case (a smoke run).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

F64 = torch.float64


def _inputs(T: int, H: int, K: int, V: int, device: str, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)
    from longctx.ops.log_linear.fenwick import required_levels
    x = {"q": r(1, T, H, K), "k": r(1, T, H, K), "v": r(1, T, H, V), "g": F.logsigmoid(r(1, T, H) + 3),
         "beta": torch.sigmoid(r(1, T, H)),
         "lambda_levels": torch.rand(1, T, H, required_levels(T - 1) + 1, generator=gen, dtype=F64) + 0.1}
    return {n: t.to(device) for n, t in x.items()}


def _err(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((out.double() - ref).abs().max() / ref.abs().max())


def main() -> None:
    cuda = torch.cuda.is_available()
    if not cuda:
        sys.path.insert(0, ".")
        import tests.ops.triton_support  # noqa: F401 - the interpreter, before the kernel modules
    from longctx.ops.common import triton_log_linear_delta, triton_scalar_decay
    from longctx.ops.common.triton_launch import launch_overrides
    from longctx.ops.gated_deltanet import chunk_gated_delta_rule, naive_gated_delta_rule
    from longctx.ops.log_linear import (
        chunk_log_linear_gated_deltanet,
        naive_log_linear_gated_deltanet,
    )

    device = "cuda" if cuda else "cpu"
    shapes = [(1000, 2, 128, 64), (1000, 2, 128, 128), (4096, 4, 128, 128), (1000, 2, 64, 64)] if cuda \
        else [(200, 1, 32, 16)]
    dtypes = [torch.bfloat16, torch.float16, torch.float32] if cuda else [torch.float32]
    res = {}
    for T, H, K, V in shapes:
        x = _inputs(T, H, K, V, device)
        ref_ll, _ = naive_log_linear_gated_deltanet(**x, use_qk_l2norm=True)
        base = {n: x[n] for n in ("q", "k", "v", "g", "beta")}
        ref_gdn, _ = naive_gated_delta_rule(**base, use_qk_l2norm=True)
        for dtype in dtypes:
            dev = {n: t.to(dtype) for n, t in x.items()}
            row = {}
            for gate_d in (False, True):
                triton_log_linear_delta.LEVELS_GATE_ON_DELTA = gate_d
                for stages in (1, 2, 3):
                    with torch.no_grad(), launch_overrides({"log_linear.delta_levels": {"num_stages": stages}}):
                        out, _ = chunk_log_linear_gated_deltanet(**dev, use_qk_l2norm=True, chunk_size=64,
                                                                 backend="triton")
                    row[f"levels gate_on_delta={int(gate_d)} stages={stages}"] = _err(ref_ll, out)
                triton_scalar_decay.GATE_ON_DELTA = gate_d
                with torch.no_grad():
                    out, _ = chunk_gated_delta_rule(**{n: dev[n] for n in base}, use_qk_l2norm=True,
                                                    backend="triton")
                row[f"gated_delta_rule GATE_ON_DELTA={int(gate_d)}"] = _err(ref_gdn, out)
            triton_log_linear_delta.LEVELS_GATE_ON_DELTA = triton_scalar_decay.GATE_ON_DELTA = False
            key = f"T={T} H={H} K={K} V={V} {str(dtype).split('.')[-1]}"
            res[key] = row
            for label, e in row.items():
                print(f"{key:34s} {label:40s} {e:.3e}", flush=True)
            with open(sys.argv[1], "w") as f:
                json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

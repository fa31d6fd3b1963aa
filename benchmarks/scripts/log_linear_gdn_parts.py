"""Where log-linear Gated DeltaNet's time goes (the level path of ``ops/log_linear/triton.py``):
each piece of one call timed alone on the kernel bench's inputs (B=1 H=16 D=128 bf16).

    python benchmarks/scripts/log_linear_gdn_parts.py OUT.json [--T 8192 65536]

Pieces: the whole op (forward, no grad; forward + backward), ``prepare_delta``, the levels inside
chunks in PyTorch (``_intra``; its triangular solve alone), the chunk levels (``_chunk_levels``: M
copies of the base in one kernel call), the fused inference forward in place of both (``_delta_fused``:
every level in three kernels, with its largest difference from them; and the whole op with it on),
and the base kernel once (one copy: what the op would cost at
1x its base). ms, median of ``triton.testing.do_bench``. Without a GPU: one host-timed call each
in the interpreter (a smoke run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from longctx.bench.ops import _write_json


def _interpreter_without_cuda() -> bool:
    """Whether a GPU runs the kernels; without one, Triton's interpreter does (with the tests' fix
    for it, tests/ops/triton_support.py), set up here before any kernel module is imported."""
    if torch.cuda.is_available():
        return True
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import tests.ops.triton_support  # noqa: F401
    return False


def _bench(fn: Callable[[], object], cuda: bool, warmup: int = 5) -> float:
    """ms per call: do_bench's median on a GPU, one host-timed call without one (a smoke run)."""
    if not cuda:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=50)


def _row(T: int, H: int, D: int, cuda: bool) -> dict:
    import longctx.ops.log_linear.triton as ll_triton
    from longctx.bench.kernels import _inputs, _ours
    from longctx.ops.common.triton_delta import delta_rule_chunk
    from longctx.ops.deltanet.chunk import ut_solve
    from longctx.ops.log_linear.chunk import _chunked, _decay_matrix
    from longctx.ops.log_linear.inputs import prepare_delta
    from longctx.ops.log_linear.triton import _chunk_levels, _delta_fused, _intra

    C = 64
    q, k, v, g, beta, lam = _inputs("log_linear_gdn", 1, T, H, D, torch.bfloat16 if cuda else torch.float64,
                                    0, "cuda" if cuda else "cpu")
    op = _ours("log_linear_gdn")
    row: dict = {"T": T}

    def timed(name: str, fn: Callable[[], object], warmup: int = 5) -> None:
        try:
            row[name] = _bench(fn, cuda, warmup)
        except Exception as e:  # noqa: BLE001 - a piece that fails is reported, the rest still run
            row[name] = f"{type(e).__name__}: {str(e)[:200]}"
        print(T, name, row[name], flush=True)

    with torch.no_grad():
        timed("op_fwd", lambda: op(q, k, v, g, beta, lam))
        if cuda:  # the host's time per call, not waiting for the GPU: ~op_fwd when launch-bound
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(10):
                op(q, k, v, g, beta, lam)
            row["op_fwd_host"] = (time.perf_counter() - t) * 100
            torch.cuda.synchronize()
        p = prepare_delta("op", q, k, v, g, beta, lam, None, None, False)
        timed("prepare", lambda: prepare_delta("op", q, k, v, g, beta, lam, None, None, False))
        timed("intra", lambda: _intra(p, C))
        N = -(-T // C)
        qc, kc, gc, bc = (_chunked(x, C, 0, N) for x in (p.q, p.k, p.g, p.beta))
        decay = _decay_matrix(gc.cumsum(dim=3))
        eye = torch.eye(C, dtype=qc.dtype, device=qc.device).expand(*qc.shape[:3], C, C)
        timed("intra_ut_solve", lambda: ut_solve(kc, bc, decay, eye))
        pos = torch.arange(T, device=q.device)
        timed("chunk_levels", lambda: _chunk_levels(p, C, q.dtype, [0], [T], pos, None))
        # the fused inference forward (ops/common/triton_log_linear_delta.py) in place of both, how far
        # apart (relative to the largest output), and the whole op with it
        timed("fused_all_levels", lambda: _delta_fused(p, C, q.dtype, [T], None))
        try:
            ref = _intra(p, C)[0] + _chunk_levels(p, C, q.dtype, [0], [T], pos, None)
            diff = _delta_fused(p, C, q.dtype, [T], None) - ref
            row["fused_vs_copies_max_diff"] = float(diff.abs().max() / ref.abs().max())
        except Exception as e:  # noqa: BLE001
            row["fused_vs_copies_max_diff"] = f"{type(e).__name__}: {str(e)[:200]}"
        print(T, "fused_vs_copies_max_diff", row["fused_vs_copies_max_diff"], flush=True)
        saved, ll_triton.FUSED_DELTA_LEVELS = ll_triton.FUSED_DELTA_LEVELS, True
        timed("op_fwd_fused", lambda: op(q, k, v, g, beta, lam))
        ll_triton.FUSED_DELTA_LEVELS = saved
        timed("base_once", lambda: delta_rule_chunk(q, k, v, beta, g, scale=D ** -0.5))
    diff = [t.requires_grad_() for t in (q, k, v, g, beta, lam)]
    do = torch.randn_like(v)
    timed("op_fwdbwd", lambda: torch.autograd.grad(op(q, k, v, g, beta, lam), diff, do), 3)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--T", type=int, nargs="+", default=[8192, 65536])
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--D", type=int, default=128)
    args = ap.parse_args()
    cuda = _interpreter_without_cuda()  # without a GPU: one call each, timed on the host (a smoke run)
    res: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "rows": []}
    for T in args.T:
        res["rows"].append(_row(T, args.H, args.D, cuda))
        _write_json(res, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

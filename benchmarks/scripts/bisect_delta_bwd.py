"""Isolate the delta-rule backward's illegal memory access on the H100 (2026-12-06, see
benchmarks/results/2026-12-06-h100-kernels-decode/README.md): launch `_delta_dh_kernel` ALONE on
synthetic inputs of the bench's shape, under launch configurations, each in its own process (a
fault poisons the CUDA context; all variants run at once: Triton compiles on the CPU), with
CUDA_LAUNCH_BLOCKING=1. Each line gives the compiled kernel's registers and spills.

    python benchmarks/scripts/bisect_delta_bwd.py                   # every variant, one line each
    python benchmarks/scripts/bisect_delta_bwd.py one W BV G THREAD # one variant

W = num_warps, BV = the V block, G = 1 for the gated form, THREAD = 1 to launch from a new
thread (as autograd's backward does). If every variant passes alone, the fault is not this
kernel's: look at what runs before it. Runs in Triton's CPU interpreter too (TRITON_INTERPRET=1,
tiny sizes) as a check of the script itself.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading


def one(num_warps: int, BV: int, gated: bool) -> None:
    import torch

    if not torch.cuda.is_available():  # the interpreter, with the tests' numpy patch, first
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
        import tests.ops.triton_support  # noqa: F401

    from longctx.ops.common.triton_delta import _delta_dh_kernel
    from longctx.ops.common.triton_scalar_decay import _acc, _prec, chunk_layout

    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float64)
    T, H, K, V, BT = (4096, 16, 128, 128, 64) if cuda else (40, 2, 16, 16, 16)
    cu = torch.tensor([0, T], dtype=torch.int32, device=dev)
    offsets, _, NC = chunk_layout(cu, BT)
    acc, ACC = _acc(dtype)
    r = lambda *s: torch.randn(*s, device=dev, dtype=dtype)
    q, k, w, do = r(1, T, H, K), r(1, T, H, K), r(1, T, H, K), r(1, T, H, V)
    gc = -torch.rand(1, T, H, device=dev, dtype=acc).cumsum(1) if gated else q
    dh = torch.empty(NC, H, K, V, dtype=acc, device=dev)
    dvn = torch.empty(1, T, H, V, dtype=acc, device=dev)
    compiled = _delta_dh_kernel[(-(-V // BV), H)](
        q, k, w, gc, do, dh, dvn, q, q, cu, offsets, K ** -0.5,
        H=H, K=K, V=V, BT=BT, BK=K, BV=BV, HAS_G=gated, USE_DHT=False, STORE_DH0=False,
        ACC=ACC, PREC=_prec(dtype), num_warps=num_warps, num_stages=1,
    )
    if cuda:
        torch.cuda.synchronize()
    regs = f"regs={getattr(compiled, 'n_regs', '?')} spills={getattr(compiled, 'n_spills', '?')}"
    print(f"ok, {regs}, |dh| = {float(dh.float().norm()):.4g}", flush=True)


def main() -> None:
    if sys.argv[1:2] == ["one"]:
        w, bv, g, thread = (int(a) for a in sys.argv[2:6])
        if thread:
            t = threading.Thread(target=one, args=(w, bv, bool(g)))
            t.start()
            t.join()
        else:
            one(w, bv, bool(g))
        return
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    variants = [(w, bv, g, 0) for w, bv, g in itertools.product((4, 8), (16, 32), (0, 1))]
    variants.append((4, 32, 0, 1))
    procs = {v: subprocess.Popen([sys.executable, __file__, "one", *map(str, v)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for v in variants}
    for (w, bv, g, th), p in procs.items():
        try:
            out, _ = p.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            p.kill()
            out = "timed out"
        lines = [s for s in out.strip().splitlines() if s.strip()]
        tail = " | ".join(lines[-2:]) if p.returncode else (lines[-1] if lines else "")
        print(f"num_warps={w} BV={bv} gated={g} thread={th}: rc={p.returncode} {tail}", flush=True)


if __name__ == "__main__":
    main()

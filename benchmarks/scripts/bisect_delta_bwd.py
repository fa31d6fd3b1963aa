"""Isolate the delta-rule backward's illegal memory access on the H100 (2026-12-06, see
benchmarks/results/2026-12-06-h100-kernels-decode/README.md): launch `_delta_dh_kernel` ALONE on
synthetic inputs of the bench's shape, under launch configurations, each in its own process (a
fault poisons the CUDA context), with CUDA_LAUNCH_BLOCKING=1.

    python benchmarks/scripts/bisect_delta_bwd.py            # every variant, one line each
    python benchmarks/scripts/bisect_delta_bwd.py one W BV   # one variant (num_warps W, BV)

If every variant passes alone, the fault is not this kernel's: look at what runs before it
(the forward's saved tensors, the autograd thread). Runs in Triton's CPU interpreter too
(TRITON_INTERPRET=1, tiny sizes) as a check of the script itself.
"""

from __future__ import annotations

import os
import subprocess
import sys


def one(num_warps: int, BV: int) -> None:
    import torch

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
    dh = torch.empty(NC, H, K, V, dtype=acc, device=dev)
    dvn = torch.empty(1, T, H, V, dtype=acc, device=dev)
    _delta_dh_kernel[(-(-V // BV), H)](
        q, k, w, q, do, dh, dvn, q, q, cu, offsets, K ** -0.5,
        H=H, K=K, V=V, BT=BT, BK=K, BV=BV, HAS_G=False, USE_DHT=False, STORE_DH0=False,
        ACC=ACC, PREC=_prec(dtype), num_warps=num_warps, num_stages=1,
    )
    if cuda:
        torch.cuda.synchronize()
    print(f"num_warps={num_warps} BV={BV}: ok, |dh| = {float(dh.float().norm()):.4g}", flush=True)


def main() -> None:
    if sys.argv[1:2] == ["one"]:
        one(int(sys.argv[2]), int(sys.argv[3]))
        return
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    for num_warps in (4, 8):
        for BV in (16, 32, 64):
            p = subprocess.run([sys.executable, __file__, "one", str(num_warps), str(BV)],
                               capture_output=True, text=True, env=env, timeout=300, check=False)
            last = (p.stdout + p.stderr).strip().splitlines()
            print(f"num_warps={num_warps} BV={BV}: rc={p.returncode} {last[-1] if last else ''}", flush=True)


if __name__ == "__main__":
    main()

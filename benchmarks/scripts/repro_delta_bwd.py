"""The delta-rule backward's illegal memory access on the H100, one case per process:

    python benchmarks/scripts/repro_delta_bwd.py OP T            # the kernel bench's inputs (H=16, K=V=128)
    python benchmarks/scripts/repro_delta_bwd.py OP T H K state  # the GPU test's: initial state in,
                                                                 # final state out (dS_T seed, dS_0 stored)

OP: deltanet or gated_deltanet; bf16. Prints "fwd ok" / "bwd ok" after synchronising each, so a
fault names its pass (run with CUDA_LAUNCH_BLOCKING=1 to name the kernel, under compute-sanitizer
to name the access)."""

import sys

import torch
import torch.nn.functional as F

from longctx.bench.kernels import _inputs, _ours


def _test_case(op: str, T: int, H: int, K: int):
    """tests/ops/test_triton_delta.py's inputs at B = 1: unit-norm k, beta in (0, 2), S0 in fp32."""
    from longctx.ops.deltanet.triton import triton_delta_rule
    from longctx.ops.gated_deltanet.triton import triton_gated_delta_rule

    gen = torch.Generator().manual_seed(T)
    r = lambda *s: torch.randn(*s, generator=gen)
    q, k, v = r(1, T, H, K), F.normalize(r(1, T, H, K), dim=-1), r(1, T, H, K)
    beta, g, S0 = 2 * torch.sigmoid(r(1, T, H)), F.logsigmoid(r(1, T, H)), r(1, H, K, K)
    q, k, v = (t.cuda().bfloat16().requires_grad_() for t in (q, k, v))
    beta, g, S0 = (t.cuda().requires_grad_() for t in (beta, g, S0))
    kw = {"scale": K ** -0.5, "initial_state": S0, "output_final_state": True}
    if op == "gated_deltanet":
        out = triton_gated_delta_rule(q, k, v, g, beta, **kw)
        return out, [q, k, v, beta, g, S0]
    return triton_delta_rule(q, k, v, beta, **kw), [q, k, v, beta, S0]


def main() -> None:
    op, T = sys.argv[1], int(sys.argv[2])
    if sys.argv[5:6] == ["state"]:
        H, K = int(sys.argv[3]), int(sys.argv[4])
        out, diff = _test_case(op, T, H, K)
        tag = f"{op} T={T} H={H} K={K} with states"
    else:
        ins = _inputs(op, 1, T, 16, 128, torch.bfloat16, seed=0)
        diff = [t.requires_grad_() for t in ins if t.dim() >= 3]
        out, tag = (_ours(op)(*ins),), f"{op} T={T}"
    torch.cuda.synchronize()
    print(tag, "fwd ok", flush=True)
    torch.autograd.grad(out, diff, [torch.randn_like(o) for o in out], allow_unused=True)
    torch.cuda.synchronize()
    print(tag, "bwd ok", flush=True)


if __name__ == "__main__":
    main()

"""The floor under the delta-rule kernels' bf16 GPU tests: how far rounding the inputs to what the
tests feed the kernel (q, k, v in bf16; beta, g, S0 in float32) moves the float64 gated delta rule's
output, final state and every gradient, with no kernel involved (relative RMS error, as the tests
measure). A kernel error far above this floor is the kernel's. CPU, ~1 min:

    PYTHONPATH=src:. python benchmarks/scripts/quant_floor_delta.py
"""

import torch

from longctx.ops.common.checks import trusted_values
from longctx.ops.gated_deltanet import naive_gated_delta_rule
from tests.ops.test_triton_delta import _inputs
from tests.ops.test_triton_kernels import _grads

GPU_SIZES = [(2, 67, 4, 64, 64), (1, 300, 2, 256, 64), (1, 1000, 4, 128, 128)]  # the GPU tests' (B, T, H, K, V)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _run(inputs: list[torch.Tensor], scale: float):
    ins = [t.clone().requires_grad_() for t in inputs]
    q, k, v, beta, g, S0 = ins
    with trusted_values():  # bf16-rounded keys are unit-norm to 1e-4 only
        out = naive_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=S0, output_final_state=True)
    return [t.detach() for t in out], _grads(out, ins, 0)


if __name__ == "__main__":
    for B, T, H, K, V in GPU_SIZES:
        x = _inputs(B, T, H, K, V, seed=T + 1)  # the gated test's inputs
        ref_out, ref_grads = _run(x, K ** -0.5)
        rounded = [t.to(dt).double() for t, dt in zip(x, [torch.bfloat16] * 3 + [torch.float32] * 3)]
        out, grads = _run(rounded, K ** -0.5)
        cols = [f"o {_rel(out[0], ref_out[0]):.4f}", f"S {_rel(out[1], ref_out[1]):.4f}"]
        cols += [f"d{n} {_rel(a, b):.4f}" for n, a, b in zip(("q", "k", "v", "beta", "g", "S0"), grads, ref_grads)]
        print((B, T, H, K, V), " ".join(cols), flush=True)

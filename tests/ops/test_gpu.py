"""Every op's fast PyTorch forms on CUDA against the float64 naive reference on the CPU (the
Triton kernels, which ``backend="auto"`` would pick on CUDA, have tests/ops/test_triton_kernels.py).

Marker ``gpu``: skipped where no CUDA device exists (CI); run with ``pytest -m gpu``.
"""

from __future__ import annotations

import pytest
import torch

from longctx.bench.ops import FORMS, OPS, _forms, _fwdbwd, _inputs, _load_op_module
from longctx.ops.common.backend import use_backend
from tests.helpers import assert_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# float32 on the GPU vs the float64 reference; bf16 inputs (fp32 accumulation) much looser
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [67, 1000])
@pytest.mark.parametrize("name", OPS)
def test_cuda_forms_match_float64_reference(name: str, T: int, dtype: torch.dtype) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    mod = _load_op_module(name)
    B, H, D = 2, 4, 32
    ref_inputs = _inputs(name, B, T, H, D, torch.float64, torch.device("cpu"), seed=T)
    forms, _ = _forms(name, mod, T, window=96, chunk_size=64)
    ref = _fwdbwd(forms["naive"], ref_inputs, seed=T)
    gpu_inputs = _inputs(name, B, T, H, D, dtype, torch.device("cuda"), seed=T)
    for form in FORMS[name]:
        if form == "naive":
            continue
        with use_backend("torch"):
            out = _fwdbwd(forms[form], gpu_inputs, seed=T)
        labels = ["o"] + [f"d{k}" for k in gpu_inputs]
        for label, r, o in zip(labels, ref, out):
            assert o.is_cuda
            assert_close(r, o.float().cpu(), TOLERANCE[dtype], f"{name}/{form}/{label}")

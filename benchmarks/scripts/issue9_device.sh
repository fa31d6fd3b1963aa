#!/usr/bin/env bash
# Issue 9 on a GPU machine (run by the `device` tool from the repo root; results under $OUT):
# the kernels' gpu tests (vs the float64 references), then ours vs fla vs SDPA in one run.
# Carries .whl/ (flash-linear-attention and fla-core wheels; the machine has no package index).
set -u
export PYTHONPATH=src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python -c "import torch, triton, sys; print(sys.version); print('torch', torch.__version__, 'triton', triton.__version__)" >> "$OUT/gpu.txt"
python -m pip install -q --no-deps --no-index .whl/*.whl >> "$OUT/gpu.txt" 2>&1
python -c "import fla; print('fla', fla.__version__)" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-240}" python -m pytest -m gpu tests/ops/test_triton_kernels.py tests/ops/test_gpu.py \
    -k "${TEST_K:-triton or retention or linear_attention or mamba2 or ssd}" -q -p no:cacheprovider -rA \
    > "$OUT/gpu_tests.txt" 2>&1
  grep -E "passed|failed|error" "$OUT/gpu_tests.txt" | tail -3
fi
timeout "${BENCH_TIMEOUT:-300}" python - <<'PY'
import os
from longctx.bench.kernels import run_kernel_bench, summary_table
ops = os.environ.get("OPS", "linear_attention,simple_gla,retention,ssd").split(",")
lengths = [int(x) for x in os.environ.get("LENGTHS", "4096,16384,65536").split(",")]
res = run_kernel_bench(ops, lengths, out=os.environ["OUT"])
print(summary_table(res))
PY

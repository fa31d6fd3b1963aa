#!/usr/bin/env bash
# One device call that does issue 8's and issue 9's GPU work in two phases (run by the `device`
# tool from the repo root; .snap/ = `git archive HEAD` of the same commit, .whl/ = the fla wheels
# and the corpora's packages). At most 8 files come back, so logs are merged.
#  A (PHASE_A s): the GPU tests of the kernels (vs float64 references) and, beside them, the
#    zoology-mqar d_model 64/128 half on the same GPU (ZJOBS workers; resumes from .snap/runs).
#    Triton compiles the delta-rule kernels slowly (~1 min a configuration on the H100's host in
#    the 2026-12-06 run): give the tests time, or fewer files (TESTS=...), or ZJOBS=0.
#  B (PHASE_B s): the kernel bench alone on the GPU (ours vs fla vs SDPA; kernels.json is
#    rewritten after every row, so a timeout keeps what finished), then the decode latency.
set -u
export PYTHONUNBUFFERED=1
R=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python -c "import torch, triton, sys; print(sys.version); print('torch', torch.__version__, 'triton', triton.__version__)" >> "$OUT/gpu.txt"
python -m pip install -q --no-deps --no-index .whl/*.whl >> "$OUT/gpu.txt" 2>&1
python -c "import fla; print('fla', fla.__version__)" >> "$OUT/gpu.txt" 2>&1
git rev-parse HEAD >> "$OUT/gpu.txt" 2>/dev/null
TA=${PHASE_A:-270}; TB=${PHASE_B:-230}
# one pytest process per file, all at once: Triton compiles on the CPU, one kernel at a time per
# process, and the host has 16 cores; the logs are merged into one file afterwards
TESTS=${TESTS:-tests/ops/test_triton_delta.py tests/ops/test_triton_log_linear.py tests/ops/test_triton_log_linear_levels.py tests/ops/test_triton_decode.py tests/generate/test_cuda_graph.py}
mkdir -p /tmp/gt
for f in $TESTS; do
  ( PYTHONPATH=src timeout "$TA" python -m pytest -m "gpu or not slow" "$f" -q -p no:cacheprovider -rfE \
      > "/tmp/gt/$(basename "$f" .py).txt" 2>&1 ) &
done
if [ "${ZJOBS:-8}" -gt 0 ]; then
  # issue8_device.sh writes into its own $OUT (/tmp/zoo, set for that command only); the store
  # and one merged log are copied into this call's $OUT afterwards
  ( mkdir -p /tmp/zoo && cd .snap && OUT=/tmp/zoo ZJOBS=${ZJOBS:-8} ARENA_TIMEOUT=$((TA - 15)) bash benchmarks/scripts/issue8_device.sh > /tmp/zoo/summary.txt 2>&1
    cp /tmp/zoo/zoology-mqar.sqlite "$R/zoology-mqar.sqlite.tmp" 2>/dev/null && mv "$R/zoology-mqar.sqlite.tmp" "$OUT/zoology-mqar.sqlite"
    cat /tmp/zoo/summary.txt /tmp/zoo/zoology.log /tmp/zoo/*failures* > "$OUT/zoology.log" 2>/dev/null ) &
fi
wait
for f in /tmp/gt/*.txt; do echo "=== $f"; cat "$f"; done > "$OUT/gpu_tests.txt"
grep -E "^=== |passed|failed|error" "$OUT/gpu_tests.txt" | grep -v "^E " | tail -20
PYTHONPATH=src timeout "$TB" python - <<'PY' > "$OUT/bench.log" 2>&1
import os
from longctx.bench.kernels import run_kernel_bench, summary_table
ops = os.environ.get("OPS", "gla,deltanet,gated_deltanet,log_linear,log_linear_gdn,linear_attention,simple_gla,ssd").split(",")
res = run_kernel_bench(ops, [4096, 16384, 65536], out="/tmp/kb")
print(summary_table(res))
PY
cp /tmp/kb/kernels.json "$OUT/" 2>/dev/null
tail -25 "$OUT/bench.log"
PYTHONPATH=src timeout "${PHASE_C:-60}" python - <<'PY' >> "$OUT/bench.log" 2>&1
import json, os, torch
from longctx.bench.decode import decode_latency, decode_model, format_rows
rows = {}
for mixer in ("gated_deltanet", "mamba2"):
    model = decode_model(mixer, d_model=1024, n_layers=4)
    rows[mixer] = decode_latency(model, (1024, 65536), steps=50)
    print(mixer, "(4 layers, d_model 1024)"); print(format_rows(rows[mixer]), flush=True)
    json.dump(rows, open(os.environ["OUT"] + "/decode.json", "w"), indent=1)
PY
tail -14 "$OUT/bench.log"

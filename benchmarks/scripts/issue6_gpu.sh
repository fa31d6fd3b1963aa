#!/usr/bin/env bash
# Issue 6 on a GPU machine (run by the `device` tool from the repo root; results under $OUT):
# the gpu-marked tests of every op, then the log-linear-mqar arena suite (resumable: the store
# lives in runs/, which a warm machine keeps between calls).
set -u
export PYTHONPATH=src
ARENA_TIMEOUT=${ARENA_TIMEOUT:-420}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt"
python -c "import torch, sys; print(sys.version); print(torch.__version__)" >> "$OUT/gpu.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python -m pytest -m gpu tests/ops/test_gpu.py -q -p no:cacheprovider -rA \
    > "$OUT/gpu_tests.txt" 2>&1
  tail -3 "$OUT/gpu_tests.txt"
fi
timeout "$ARENA_TIMEOUT" python -c "from longctx.cli.main import main; raise SystemExit(main(['arena', '--suite', 'log-linear-mqar', '--device', 'cuda', '--jobs', '${JOBS:-8}', '--threads', '${THREADS:-1}', '--out', '${RUNS:-runs}', '--quiet', '--no-report']))" \
  > "$OUT/arena.txt" 2>&1
echo "arena exit $?"
python - <<'PY'
import os, shutil, sqlite3
src = os.environ.get("RUNS", "runs") + "/log-linear-mqar/results.sqlite"
con = sqlite3.connect(src)
con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print("runs stored:", con.execute("select count(*) from runs").fetchone()[0])
con.close()
shutil.copy(src, os.path.join(os.environ["OUT"], "results.sqlite"))
PY
tail -5 "$OUT/arena.txt"

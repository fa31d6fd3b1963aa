#!/usr/bin/env bash
# Issue 8 on a GPU machine (the `device` tool, from a snapshot of a commit unpacked in .snap/,
# the shipped corpora's packages copied into .whl/site): in parallel,
#  - the d_model 64/128 half of zoology-mqar on the GPU (ZJOBS workers),
#  - the standard suite on the CPU (SJOBS workers, 1 thread each: per-run wall times as on a
#    2-core machine running 2 jobs).
# Both resume: the stores live in runs/ (carried back and forth between calls) and are copied to
# $OUT at the end; stopping at ARENA_TIMEOUT loses only the runs in flight.
set -u
export PYTHONPATH="$PWD/src:$PWD/../.whl/site" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # a dozen workers share one GPU
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python -c "import torch, sys; print(sys.version); print('torch', torch.__version__)" >> "$OUT/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" >> "$OUT/gpu.txt"
sed 's/^d_model = .*/d_model = [64, 128]/' src/longctx/arena/suites/zoology-mqar.toml > /tmp/zoology-mqar.toml
T=${ARENA_TIMEOUT:-540}
if [ "${ZJOBS:-10}" -gt 0 ]; then
  timeout "$T" python -m longctx.cli.main arena --suite /tmp/zoology-mqar.toml --device cuda \
    --jobs "${ZJOBS:-10}" --threads 1 --out runs --no-report --quiet > "$OUT/zoology.log" 2>&1 &
fi
if [ "${SJOBS:-0}" -gt 0 ]; then
  timeout "$T" python -m longctx.cli.main arena --suite standard --device cpu \
    --jobs "${SJOBS:-4}" --threads 1 --out runs --no-report --quiet > "$OUT/standard.log" 2>&1 &
fi
wait
for s in zoology-mqar standard; do  # fold the WAL into the file first (a killed run leaves it)
  [ -f "runs/$s/results.sqlite" ] || continue
  python -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(TRUNCATE)')" "runs/$s/results.sqlite"
  cp "runs/$s/results.sqlite" "$OUT/$s.sqlite"
  [ -f "runs/$s/failures.log" ] && cp "runs/$s/failures.log" "$OUT/$s-failures.log"
done
python - <<'PY'
import glob, sqlite3
for p in sorted(glob.glob("runs/*/results.sqlite")):
    con = sqlite3.connect(p)
    n, wall = con.execute("SELECT COUNT(*), SUM(wall_time_s) FROM runs").fetchone()
    print(p, "finished runs:", n, "sum of wall s:", round(wall or 0))
PY
for f in "$OUT"/*.log; do echo "== $f"; tail -n 3 "$f"; done

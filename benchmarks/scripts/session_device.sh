#!/usr/bin/env bash
# One device call that does issue 8's and issue 9's GPU work at once (run by the `device` tool
# from the repo root; .snap/ = `git archive HEAD` of the same commit, .whl/ = the fla wheels and
# the corpora's packages; carry [".snap", ".whl"]). At most 8 files come back, so logs are merged.
#  - zoology-mqar, d_model 64/128 half, ZJOBS workers on the GPU, in the background for the whole
#    call (TOTAL s); resumes from .snap/runs (copy the returned zoology-mqar.sqlite there).
#  - DIAG=1: the delta-rule backward's fault (delta_bwd_diag.sh).
#  - GRADS=1: bisect_delta_grads.py (which delta-rule backward kernel is wrong in bf16 at K > 64, and
#    which variant mends it: GRADS_VARIANTS, e.g. "delta.delta_dh:F32_DOTS=1 ..."), first, one process
#    per (case of GRADS_CASES, variant). FIX=1: then the tests and the bench run with
#    triton_delta.HALF_DH_F32_DOTS = the mask with the fewest bits whose gradients were all right.
#  - BISECT=1: bisect_delta_h.py (which form of the delta-rule state pass is right in bf16), first.
#  - the GPU tests (vs float64 references): one pytest process per ';'-separated entry of TESTS,
#    all at once (Triton compiles on the CPU, one kernel at a time per process), PHASE_A s.
#  - ZWAIT=1: the zoology workers finish (or time out) before anything below is timed.
#  - BREAKDOWN=op,op: each kernel's CUDA time in one call of the op, ours vs fla (kernel_breakdown.py;
#    BREAKDOWN_ARGS="--backward --T 16384" passes its options).
#  - EXTRA="python script.py /tmp/x.json ...": one more command after the tests (its output: extra.txt),
#    at most EXTRA_S (170) s.
#  (tune.json and breakdown.json stay on the device: their .txt hold the same rows, and 8 files come back)
#  - TUNE="op op": tune_kernels.py's sweep of the launch settings (tune.json / tune.txt).
#  - the kernel bench (OPS; kernels.json is rewritten after every row, so a timeout keeps what
#    finished), then the decode latency if PHASE_C > 0.
#  - DELTA_STAGED=1: the tests and the bench run with triton_delta.STAGED_TRAINING_PASSES = True (the
#    default since session 17; kept for trying the flag again after a kernel change).
#  - LL_DELTA_FUSED=1: log-linear Gated DeltaNet's inference forward takes the fused path
#    (ops/log_linear/triton.FUSED_DELTA_LEVELS: every level in three kernels) in the tests' processes, the warm-up and the bench.
#  - GATE_ON_DELTA=1: the state passes of _pieces_out put the gate on Delta's rows, not on K^T
#    (ops/common/triton_scalar_decay.GATE_ON_DELTA) in the warm-up and the bench (the tests take
#    both settings as a parameter).
#  - LOOKBACK=1: the scalar-decay inference forward in one launch by look-back
#    (ops/common/triton_scalar_decay.LOOKBACK_FORWARD) in the warm-up and the bench.
#  - GROUPED_LEVELS=1: log-linear's scalar-decay kernels keep one level state per chunk, forward and backward
#    (ops/common/triton_log_linear.GROUPED_LEVELS) in the warm-up and the bench (the tests take both).
#  - GLA_LEVELS=1: GLA's intra-chunk scores by levels of pairs (ops/common/triton_gla.SCORES_BY_LEVELS)
#    in the warm-up and the bench (the tests take both).
#  - VEC_INV=1 / HALF_WU=1: the UT transform's diagonal blocks by element-wise forward substitution /
#    W and U by half-precision dots (triton_delta.VECTOR_DIAG_INVERSE / HALF_WU); DH_INTRA=1: dDelta's
#    intra-chunk part before the reverse state pass (triton_delta.DH_INTRA_OUTSIDE).
#  - GLA_CUMSUM=1: GLA's G formed in its kernels from the raw gates (triton_gla.CUMSUM_IN_KERNELS;
#    slower on an H100 in session 21). (Its backward's dq / dk by levels, DQK_BY_LEVELS: on since then.)
#  - LL_DELTA_TRAIN=1: log-linear Gated DeltaNet's training by the level walks of
#    triton_log_linear_delta_train (ops/log_linear/triton.FUSED_DELTA_TRAINING; the default since
#    session 21, so a no-op).
#  - a TESTS entry or EXTRA command runs with PYTHONPATH=src (a bare pytest on the device does not
#    find the package without it); EXTRA runs under `timeout`, so it must start with a program,
#    not `cd` (session 21 lost its EXTRA that way): `python benchmarks/scripts/flag_ab.py \$OUT/ab.json ...`
#    (a script's own folder is on its import path).
#  (the settings on trial, DELTA_STAGED .. LL_DELTA_TRAIN, apply to the breakdown and the tuning sweep
#    too: /tmp/with_trials.py; EXTRA's command sets its own)
#  - WARM=1: the bench's kernels (ours and fla's, per op of OPS) and TUNE's settings compile in parallel
#    beside the tests.
#  - TCACHE_OUT=1: the Triton kernel cache of the warm-up and the bench (the tests compile into their own)
#    comes back as triton_cache.tgz (or its parts .tgz.aa, .ab); put them in .tcache/ (ignored) and
#    carry ".tcache": the next fresh machine starts with those kernels compiled.
set -u
export PYTHONUNBUFFERED=1
# fla's autotuned launch settings to disk, beside the compiled kernels: the bench's row processes
# (and, with the cache carried, later calls) reuse them instead of timing every config again
export TRITON_CACHE_AUTOTUNING=1
R=$PWD
TOTAL=${TOTAL:-570}
START=$(date +%s)
left() { echo $((TOTAL - $(date +%s) + START)); }
# the Triton kernel cache of an earlier call (.tcache/triton_cache.tgz, from TCACHE_OUT=1; carry
# ".tcache"): a fresh machine otherwise compiles ours and fla's kernels again, 60-100 s per op
TCACHE=${TRITON_CACHE_DIR:-$HOME/.triton/cache}
if ls .tcache/triton_cache.tgz* > /dev/null 2>&1; then  # one file, or parts .tgz.aa, .ab, ...
  mkdir -p "$TCACHE" && cat .tcache/triton_cache.tgz* | tar -xz -C "$TCACHE" && echo "triton cache: $(ls "$TCACHE" | wc -l) entries"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python -c "import torch, triton, sys; print(sys.version); print('torch', torch.__version__, 'triton', triton.__version__)" >> "$OUT/gpu.txt"
python -m pip install -q --no-deps --no-index .whl/*.whl >> "$OUT/gpu.txt" 2>&1
python -c "import fla; print('fla', fla.__version__)" >> "$OUT/gpu.txt" 2>&1
git rev-parse HEAD >> "$OUT/gpu.txt" 2>/dev/null

# default workers: one per 7 GiB of GPU memory, at most 14 (a zoology run at d_model 128, T 256
# reserves up to ~5.5 GiB; the tests and the bisect share the GPU): 11 on an H100, 14 on an H200
if [ -z "${ZJOBS-}" ]; then
  MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  ZJOBS=$(( MIB / 7168 < 14 ? MIB / 7168 : 14 ))
fi
if [ "$ZJOBS" -gt 0 ]; then
  # issue8_device.sh writes into its own $OUT (/tmp/zoo); the store and one merged log are
  # copied into this call's $OUT at the end
  ( mkdir -p /tmp/zoo && cd .snap && OUT=/tmp/zoo ZJOBS=$ZJOBS ARENA_TIMEOUT=$((TOTAL - 30)) bash benchmarks/scripts/issue8_device.sh > /tmp/zoo/summary.txt 2>&1
    cp /tmp/zoo/zoology-mqar.sqlite "$R/zoology-mqar.sqlite.tmp" 2>/dev/null && mv "$R/zoology-mqar.sqlite.tmp" "$OUT/zoology-mqar.sqlite"
    cat /tmp/zoo/summary.txt /tmp/zoo/zoology.log /tmp/zoo/*failures* > "$OUT/zoology.log" 2>/dev/null ) &
  ZPID=$!
fi

if [ "${BISECT:-0}" = 1 ]; then  # one process per (variant, K): a fault poisons only its own case
  mkdir -p /tmp/bis
  for v in current row_trans fp32_dot; do for K in 64 128 256; do
    PYTHONPATH=src timeout 240 python benchmarks/scripts/bisect_delta_h.py "/tmp/bis/${v}_$K.json" "$v" "$K" > "/tmp/bis/${v}_$K.txt" 2>&1 &
  done; done
  wait $(jobs -p | grep -v "^${ZPID:-x}$")
  python -c "import glob, json, sys; json.dump({k: v for p in sorted(glob.glob('/tmp/bis/*.json')) for k, v in json.load(open(p)).items()}, open(sys.argv[1], 'w'), indent=1)" "$OUT/bisect_delta_h.json"
  for f in /tmp/bis/*.txt; do echo "== $f"; tail -6 "$f"; done > "$OUT/bisect_delta_h.txt"
  cat "$OUT/bisect_delta_h.txt" | grep -v "^==" | cut -c1-150
fi

if [ "${GRADS:-0}" = 1 ]; then  # one process per (case, variant); ~1-2 minutes (compiles)
  mkdir -p /tmp/bg
  IFS=';' read -ra gcases <<< "${GRADS_CASES:-0 128 1000 1;1 128 1000 1;1 256 300 1;0 64 1000 1}"
  read -ra gvars <<< "${GRADS_VARIANTS:-ieee delta.delta_dqk:num_warps=4}"
  for c in "${gcases[@]}"; do for v in "${gvars[@]}"; do
    f="/tmp/bg/${c// /_}_${v//[^A-Za-z0-9]/_}"
    PYTHONPATH=src timeout 240 python benchmarks/scripts/bisect_delta_grads.py "$f.json" $c "$v" > "$f.txt" 2>&1 &
  done; done
  wait $(jobs -p | grep -v "^${ZPID:-x}$")
  python - "$OUT/bisect_delta_grads.json" <<'PY'
import glob, json, sys
res = {}
for p in sorted(glob.glob("/tmp/bg/*.json")):
    for case, labels in json.load(open(p)).items():
        res.setdefault(case, {}).update(labels)
json.dump(res, open(sys.argv[1], "w"), indent=1)
PY
  grep -h "bf16" /tmp/bg/*.txt | sort -u | awk '$NF > 0.05' | cut -c1-130 | head -60
fi

if [ "${FIX:-0}" = 1 ]; then  # the F32_DOTS mask of _delta_dh_kernel that the bisect found right, if any
  DH_MASK=$(python - "$OUT/bisect_delta_grads.json" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
worst = {}  # mask -> the largest relative error over cases and gradients (dg: conditioning, left out)
for case, labels in res.items():
    for label, errs in labels.items():
        if "F32_DOTS=" in label:
            m = int(label.split("F32_DOTS=")[1].split()[0])
            e = max(v for k, v in errs.items() if not k.endswith(".dg"))
            worst[m] = max(worst.get(m, 0.0), e)
print(json.dumps(worst), file=sys.stderr)
ok = sorted((bin(m).count("1"), m) for m, e in worst.items() if e < 0.03)
print(ok[0][1] if ok else "")
PY
  )
  export DH_MASK
  echo "DH_MASK=${DH_MASK:-none found}"
fi

if [ "${DIAG:-0}" = 1 ]; then
  ( bash benchmarks/scripts/delta_bwd_diag.sh > "$OUT/delta_diag.txt" 2>&1 ) &
  DPID=$!
fi

# default (after session 12): every kernel test file, the delta rule's in three processes — the
# scalar-decay, GLA and delta-rule backward kernels changed on the CPU (direct dg, tuned launch
# settings, register diet) and have not run on a GPU since
DEFAULT_TESTS="tests/ops/test_triton_delta.py -k 'delta_rule_kernel_matches and not gated';tests/ops/test_triton_delta.py -k gated_delta_rule_kernel_matches;tests/ops/test_triton_delta.py -k 'not kernel_matches';tests/ops/test_triton_kernels.py;tests/ops/test_triton_gla.py;tests/ops/test_triton_log_linear.py;tests/ops/test_triton_log_linear_levels.py;tests/generate/test_cuda_graph.py tests/bench/test_bench.py"
TESTS=${TESTS:-$DEFAULT_TESTS}
[ "$TESTS" = none ] && TESTS=
mkdir -p /tmp/gt
# settings on trial, imported by the tests, the warm-up and the bench (their row processes too):
# triton_delta.HALF_DH_F32_DOTS = $DH_MASK (the bisect's mend) and, with DELTA_STAGED=1, the delta
# rule's training state passes at 3 stages
cat > /tmp/trials.py <<'PY'
import os
if os.environ.get("GROUPED_LEVELS"):
    from longctx.ops.common import triton_log_linear
    triton_log_linear.GROUPED_LEVELS = True
if os.environ.get("GATE_ON_DELTA"):
    from longctx.ops.common import triton_scalar_decay
    triton_scalar_decay.GATE_ON_DELTA = True
if os.environ.get("LOOKBACK"):
    from longctx.ops.common import triton_scalar_decay
    triton_scalar_decay.LOOKBACK_FORWARD = True
if os.environ.get("GLA_LEVELS"):
    from longctx.ops.common import triton_gla
    triton_gla.SCORES_BY_LEVELS = True
if os.environ.get("VEC_INV") or os.environ.get("HALF_WU") or os.environ.get("DH_INTRA"):
    from longctx.ops.common import triton_delta
    triton_delta.VECTOR_DIAG_INVERSE = bool(os.environ.get("VEC_INV"))
    triton_delta.HALF_WU = bool(os.environ.get("HALF_WU"))
    triton_delta.DH_INTRA_OUTSIDE = bool(os.environ.get("DH_INTRA"))
if os.environ.get("GLA_CUMSUM"):
    from longctx.ops.common import triton_gla
    triton_gla.CUMSUM_IN_KERNELS = True
if os.environ.get("LL_DELTA_TRAIN"):
    from longctx.ops.log_linear import triton as ll_triton
    ll_triton.FUSED_DELTA_TRAINING = True
if os.environ.get("LL_DELTA_FUSED"):
    from longctx.ops.log_linear import triton as ll_triton
    ll_triton.FUSED_DELTA_LEVELS = True
if os.environ.get("DH_MASK") or os.environ.get("DELTA_STAGED"):
    from longctx.ops.common import triton_delta
    if os.environ.get("DH_MASK"):
        triton_delta.HALF_DH_F32_DOTS = int(os.environ["DH_MASK"])
    if os.environ.get("DELTA_STAGED"):
        triton_delta.STAGED_TRAINING_PASSES = True
PY
# the breakdown and the tuning sweep run in-process under the same settings
cat > /tmp/with_trials.py <<'PY'
import runpy
import sys

import trials  # noqa: F401 - the settings on trial

sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
PY
cat > /tmp/pytest_mask.py <<'PY'
import sys
import trials  # noqa: F401 - the settings on trial
import pytest
sys.exit(pytest.main(sys.argv[1:]))
PY
pids=()
i=0
entries=()
[ -n "$TESTS" ] && IFS=';' read -ra entries <<< "$TESTS"
for e in "${entries[@]}"; do
  i=$((i + 1))
  # the tests compile into their own cache: the one TCACHE_OUT returns holds the bench's kernels only
  ( eval "TRITON_CACHE_DIR=/tmp/tcache_tests PYTHONPATH=src timeout ${PHASE_A:-270} python /tmp/pytest_mask.py -m 'gpu or not slow' $e -q -p no:cacheprovider -rfE" > "/tmp/gt/$i.txt" 2>&1 ) &
  pids+=($!)
done
# WARM=1: beside the tests, one process per op of OPS runs the bench's 4k row once (timings thrown
# away) so that ours' and fla's kernels compile in parallel on the CPUs, not one op after another
# inside the timed bench. fla's autotuning is not cached here (it would pick its configs on a
# shared GPU): the bench's first row of each op times them again, with the kernels compiled.
if [ "${WARM:-0}" = 1 ]; then
  for op in $(echo "${OPS:-gla,linear_attention,simple_gla,ssd,log_linear,deltanet,gated_deltanet,log_linear_gdn}" | tr , ' '); do
    ( TRITON_CACHE_AUTOTUNING=0 PYTHONPATH=src:/tmp timeout ${PHASE_A:-270} python -c "import torch, sys, trials; from longctx.bench.kernels import _op_row; print(_op_row(sys.argv[1], 4096, 1, 16, 128, torch.bfloat16, True, 3e12))" "$op" > "/tmp/gt/warm_$op.txt" 2>&1 ) &
    pids+=($!)
  done
fi
if [ "${WARM:-0}" = 1 ] && [ -n "${TUNE-}" ]; then  # the sweep's settings compile now too (its timings here: thrown away)
  ( PYTHONPATH=src:/tmp timeout ${PHASE_A:-270} python /tmp/with_trials.py benchmarks/scripts/tune_kernels.py /tmp/gt/tune_warm.json $TUNE > /tmp/gt/warm_tune.txt 2>&1 ) &
  pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p"; done
[ "${WARM:-0}" = 1 ] && for f in /tmp/gt/warm_*.txt; do echo "warm $f: $(tail -c 300 "$f" | tr '\n' ' ')"; done | cut -c1-400
if [ "${#entries[@]}" -gt 0 ]; then
  i=0
  for e in "${entries[@]}"; do i=$((i + 1)); echo "=== $e"; cat "/tmp/gt/$i.txt"; done > "$OUT/gpu_tests.txt"
  grep -E "^=== |passed|failed|error" "$OUT/gpu_tests.txt" | grep -v "^E " | tail -20
fi

if [ "${ZWAIT:-0}" = 1 ] && [ -n "${ZPID-}" ]; then  # the timings below run with the GPU to themselves
  wait "$ZPID"; ZPID=
  tail -3 "$OUT/zoology.log"; echo "zoology done, $(left) s left"
fi

if [ -n "${EXTRA-}" ] && [ "$(left)" -gt 60 ]; then  # one more command, e.g. a parts timing script
  ES=${EXTRA_S:-170}  # at most this many seconds
  ( eval "PYTHONPATH=src timeout $(( $(left) < ES + 30 ? $(left) - 30 : ES )) $EXTRA" > "$OUT/extra.txt" 2>&1 )
  tail -20 "$OUT/extra.txt"
fi

# the kernel bench (ours vs fla vs SDPA, OPS x LENGTHS); BENCH_FIRST=1: before the breakdown / tuning,
# at most BENCH_S seconds
kernel_bench() {
  local TB=$(( $(left) - ${PHASE_C:-0} - 40 ))
  [ "${BENCH_FIRST:-0}" = 1 ] && TB=$(( TB < ${BENCH_S:-240} ? TB : ${BENCH_S:-240} ))
  if [ "$TB" -gt 30 ] && [ -n "${OPS-x}" ]; then
    # from a file, not stdin: the bench spawns a process per row, which re-imports the main script
    cat > /tmp/kernel_bench.py <<'PY'
import os
import trials  # noqa: F401 - at import: the bench's row processes re-import this file
from longctx.bench.kernels import run_kernel_bench, summary_table
if __name__ == "__main__":
    res = run_kernel_bench(os.environ["OPS"].split(","), [int(t) for t in os.environ.get("LENGTHS", "4096,16384,65536").split(",")], out="/tmp/kb")
    print(summary_table(res))
PY
    PYTHONPATH=src OPS="${OPS:-gla,linear_attention,simple_gla,ssd,log_linear,deltanet,gated_deltanet,log_linear_gdn}" timeout "$TB" python /tmp/kernel_bench.py > "$OUT/bench.log" 2>&1
    cp /tmp/kb/kernels.json "$OUT/" 2>/dev/null
    tail -25 "$OUT/bench.log"
  fi
}
[ "${BENCH_FIRST:-0}" = 1 ] && kernel_bench

if [ -n "${BREAKDOWN-}" ] && [ "$(left)" -gt 60 ]; then  # e.g. BREAKDOWN=gla,simple_gla: ours vs fla per kernel
  PYTHONPATH=src:/tmp timeout $(( $(left) < 200 ? $(left) - 30 : 170 )) python /tmp/with_trials.py benchmarks/scripts/kernel_breakdown.py /tmp/breakdown.json ${BREAKDOWN//,/ } ${BREAKDOWN_ARGS-} > "$OUT/breakdown.txt" 2>&1
  tail -40 "$OUT/breakdown.txt"
fi

if [ -n "${TUNE-}" ] && [ "$(left)" -gt 90 ]; then  # e.g. TUNE="gla simple_gla": launch settings swept
  PYTHONPATH=src:/tmp timeout $(( $(left) - ${PHASE_C:-0} - 60 )) python /tmp/with_trials.py benchmarks/scripts/tune_kernels.py /tmp/tune.json $TUNE > "$OUT/tune.txt" 2>&1
  tail -30 "$OUT/tune.txt"
fi

[ "${BENCH_FIRST:-0}" = 1 ] || kernel_bench
if [ "${PHASE_C:-0}" -gt 0 ]; then
  PYTHONPATH=src timeout "$PHASE_C" python - <<'PY' >> "$OUT/bench.log" 2>&1
import json, os, torch
from longctx.bench.decode import block_latency, decode_latency, decode_model, format_rows, mixer_latency
rows = {}
for mixer in ("gated_deltanet", "mamba2", "gla", "linear_attention"):
    # issue 9's target: one mixer layer's decode step <= 0.03 ms at any context (d_model 1024,
    # 8 heads of 128), the layer alone, at 1k and 64k tokens of context
    rows[mixer + "/layer"] = [r for L in (1024, 65536) for r in mixer_latency(mixer, context=L)]
    print(mixer, "layer step:", rows[mixer + "/layer"], flush=True)
    json.dump(rows, open(os.environ["OUT"] + "/decode.json", "w"), indent=1)
for mixer in ("gated_deltanet", "mamba2"):
    # one block's step (mixer + MLP + norms: issue 9's per-layer target bounds the mixer), then
    # the whole 4-layer model at 1k and 64k context
    rows[mixer + "/block"] = block_latency(mixer, layers=(1, 5), d_model=1024, n_heads=8)
    print(mixer, "per block:", rows[mixer + "/block"], flush=True)
    model = decode_model(mixer, d_model=1024, n_layers=4)
    rows[mixer] = decode_latency(model, (1024, 65536), steps=50)
    print(mixer, "(4 layers, d_model 1024)"); print(format_rows(rows[mixer]), flush=True)
    json.dump(rows, open(os.environ["OUT"] + "/decode.json", "w"), indent=1)
PY
  tail -14 "$OUT/bench.log"
fi
[ -n "${DPID-}" ] && wait "$DPID" && cat "$OUT/delta_diag.txt"
[ -n "${ZPID-}" ] && wait "$ZPID" && tail -5 "$OUT/zoology.log"
if [ "${TCACHE_OUT:-0}" = 1 ]; then  # the cache back for the next call: files of <= 16 MiB, 8 files at most
  tar -czf /tmp/triton_cache.tgz -C "$TCACHE" . && SZ=$(stat -c %s /tmp/triton_cache.tgz)
  NPART=$(( (SZ + 15000000 - 1) / 15000000 ))
  if [ $(( $(ls "$OUT" | wc -l) + NPART )) -le 8 ] && [ "$NPART" -le 2 ]; then  # 2 parts: the carry's 64 MiB
    if [ "$NPART" -eq 1 ]; then cp /tmp/triton_cache.tgz "$OUT/"; else split -b 15000000 /tmp/triton_cache.tgz "$OUT/triton_cache.tgz."; fi
    echo "triton cache: $SZ bytes in $NPART file(s) ($(ls "$TCACHE" | wc -l) entries)"
  else
    echo "triton cache: not returned ($SZ bytes, $(ls "$OUT" | wc -l) files in \$OUT)"
  fi
fi

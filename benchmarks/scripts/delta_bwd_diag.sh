#!/usr/bin/env bash
# The delta-rule backward's illegal memory access (issue 9), from the repo root on a GPU machine:
#  1. bisect_delta_bwd.py: _delta_dh_kernel alone under 9 launch variants (2026-12-06: 2 of 9
#     faulted, num_warps 8 only, and not the same BV / gate in both; each passes elsewhere);
#  2. the whole op (repro_delta_bwd.py, T = 4096) under compute-sanitizer memcheck with
#     PyTorch's caching allocator off, so an access past a tensor's end is caught (inside one of
#     the allocator's segments memcheck cannot see it: that would explain a fault that comes
#     and goes with where the tensors land);
#  3. the same without the sanitizer (does the fault reproduce with each tensor its own
#     allocation?);
#  4. the GPU test's failing configurations under memcheck (below).
set -u
export PYTHONPATH=src CUDA_LAUNCH_BLOCKING=1
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
( timeout 300 python benchmarks/scripts/bisect_delta_bwd.py > /tmp/diag_bisect.txt 2>&1 ) &
for op in deltanet gated_deltanet; do
  ( PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 300 "$CS" --tool memcheck --print-limit 4 \
      python benchmarks/scripts/repro_delta_bwd.py $op 4096 > "/tmp/diag_memcheck_$op.txt" 2>&1
    for i in 1 2 3; do
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 100 python benchmarks/scripts/repro_delta_bwd.py $op 4096 2>&1 | tail -1
    done > "/tmp/diag_nocache_$op.txt" ) &
done
# 4. (session 12) the GPU test's failing cases: T = 1000 (a partial last chunk), H = 4, an initial
#    state in and the final state out (the dS_T seed and the stored dS_0), under memcheck
for c in "deltanet 1000 4 128" "gated_deltanet 300 2 256" "deltanet 1000 4 64"; do
  ( PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 300 "$CS" --tool memcheck --print-limit 4 \
      python benchmarks/scripts/repro_delta_bwd.py $c state > "/tmp/diag_memcheck_state_${c// /_}.txt" 2>&1 ) &
done
wait
# memcheck's first report (which access, which address, how far past which allocation) is at the
# head of its output, the host stack and the summary at the tail: keep both
for f in /tmp/diag_bisect.txt /tmp/diag_memcheck_*.txt /tmp/diag_nocache_*.txt; do
  echo "=== $f"; grep -v "^\s*$" "$f" | grep -v "Host Frame" | head -40 | cut -c1-240
  echo "..."; grep -v "^\s*$" "$f" | tail -6 | cut -c1-240
done

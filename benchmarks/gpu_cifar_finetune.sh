#!/usr/bin/env bash
# One device call: bench CLI check of the speed target with the default schedule, the
# training-free table of the bundled CIFAR-10 model, then a 1-epoch distillation fine-tune per
# method at flops=0.6 (dense fine-tuned the same way as the control). Writes under $OUT.
#   bash benchmarks/gpu_cifar_finetune.sh                                # all of it
#   TABLE=0 METHODS="prune-norm tome" bash benchmarks/gpu_cifar_finetune.sh   # fine-tunes only
source "$(dirname "$0")/gpu_common.sh"
mkdir -p "$O/results" "$O/ft"
METHODS=${METHODS:-dense stm prune-top random rmeeto}
if [ "${TABLE:-1}" = 1 ]; then
  step 120 python benchmarks/gpu_check_bwd.py || export VIMSTM_SCAN_BWD=chunk
  echo "scan backward: ${VIMSTM_SCAN_BWD:-seq}"
  for m in vim_tiny vim_small; do
    step 60 python -m vimstm.cli bench --model $m --dtype fp16 --batch-size 256 --warmup 5 \
      --runs 20 --method stm --flops 0.6 --json "$O/bench_${m}_stm.json"
  done
  step 150 python benchmarks/cifar_results.py --data .data/test.tar.xz --out "$O/results"
fi
for m in $METHODS; do
  M=(--method "$m" --flops 0.6); [ "$m" = dense ] && M=()
  step 95 python -m vimstm.cli finetune --model vim_tiny_cifar10 --data .data/train.tar.xz \
    --val-data .data/test.tar.xz --output "/tmp/ft_$m" --epochs 1 --batch-size 256 --workers 12 \
    --aa rand-m6-n2-mstd0.5-inc1 --mixup 0.1 --reprob 0 --amp bf16 --no-progress "${M[@]}"
  cp "/tmp/ft_$m/log.jsonl" "$O/ft/${m}.jsonl" 2>/dev/null
done
echo "== done"

#!/usr/bin/env bash
# One device call: bench CLI check of the speed target with the default schedule, the
# training-free table of the bundled CIFAR-10 model, then a 1-epoch distillation fine-tune per
# method at flops=0.6 (dense fine-tuned the same way as the control). Writes under $OUT.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH
O=${OUT:-/tmp/out}; mkdir -p "$O/results" "$O/ft"
log() { tee -a "$O/log.txt" | grep -v -e "^\s*$" -e Warn | tail -${1:-30}; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/log.txt"
timeout 120 python benchmarks/gpu_check_bwd.py 2>&1 | log 12 || export VIMSTM_SCAN_BWD=chunk
echo "scan backward: ${VIMSTM_SCAN_BWD:-seq}" | log 1
for m in vim_tiny vim_small; do
  timeout 60 python -m vimstm.cli bench --model $m --dtype fp16 --batch-size 256 --warmup 5 --runs 20 \
    --method stm --flops 0.6 --json "$O/bench_${m}_stm.json" 2>&1 | log 10
done
timeout 150 python benchmarks/cifar_results.py --data .data/test.tar.xz --out "$O/results" 2>&1 | log 40
for m in dense stm prune-top random rmeeto; do
  M=(--method $m --flops 0.6); [ $m = dense ] && M=()
  timeout 90 python -m vimstm.cli finetune --model vim_tiny_cifar10 --data .data/train.tar.xz \
    --val-data .data/test.tar.xz --output "/tmp/ft_$m" --epochs 1 --batch-size 256 --workers 12 \
    --aa rand-m6-n2-mstd0.5-inc1 --mixup 0.1 --reprob 0 --amp bf16 --no-progress "${M[@]}" 2>&1 | log 4
  cp "/tmp/ft_$m/log.jsonl" "$O/ft/${m}.jsonl" 2>/dev/null
done
echo "== done"

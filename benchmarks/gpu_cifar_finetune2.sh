#!/usr/bin/env bash
# The two methods left out of gpu_cifar_finetune.sh: 1-epoch fine-tunes of prune-norm and tome at
# flops=0.6 (same recipe). Writes $OUT/ft/*.jsonl.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH
O=${OUT:-/tmp/out}; mkdir -p "$O/ft"
for m in prune-norm tome; do
  timeout 95 python -m vimstm.cli finetune --model vim_tiny_cifar10 --data .data/train.tar.xz \
    --val-data .data/test.tar.xz --output "/tmp/ft_$m" --epochs 1 --batch-size 256 --workers 12 \
    --aa rand-m6-n2-mstd0.5-inc1 --mixup 0.1 --reprob 0 --amp bf16 --no-progress \
    --method $m --flops 0.6 2>&1 | grep -v Warn | tail -2
  cp "/tmp/ft_$m/log.jsonl" "$O/ft/${m}.jsonl" 2>/dev/null
done
echo "== done"

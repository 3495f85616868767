#!/usr/bin/env bash
# One device call of the CIFAR-10 reference training (run from the repo root on the GPU machine).
# The data travels as .data/{train,test}.tar.xz (ignored, carried). The run resumes from
# runs/vim_tiny_cifar10/last.pth when the same machine is still warm; each call ends by exporting
# the EMA weights (fp16 safetensors) and evaluating them, so every call leaves a usable model.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
RUN=runs/vim_tiny_cifar10
MAX_MINUTES=${MAX_MINUTES:-8} EPOCHS=${EPOCHS:-20} bash scripts/train_cifar10.sh .data "$RUN"
cp "$RUN/log.jsonl" "$OUT/log.jsonl" 2>/dev/null
python -m vimstm.cli export "$RUN/last.pth" --weights ema --dtype fp16 -o "$OUT/vim_tiny_cifar10.safetensors" \
  && python -m vimstm.cli eval --model vim_tiny_cifar10 --checkpoint "$OUT/vim_tiny_cifar10.safetensors" \
       --data .data/test.tar.xz --batch-size 512 --workers 8 --json "$OUT/test_eval.json" --no-progress
tail -3 "$RUN/log.jsonl"

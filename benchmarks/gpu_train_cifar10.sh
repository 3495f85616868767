#!/usr/bin/env bash
# One device call: train the CIFAR-10 reference model from scratch for as long as the call
# allows, export its EMA weights (fp16 safetensors) and make the training-free results table.
# Run from the repo root on the GPU machine with .data/{train,test}.tar.xz carried.
#   EPOCHS=6 MAX_MINUTES=6.5 bash benchmarks/gpu_train_cifar10.sh
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH
O=${OUT:-/tmp/out}; mkdir -p "$O/results"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/log.txt"
# the sequential scan backward (new): checked against the chunked one on this GPU first
timeout 120 python benchmarks/gpu_check_bwd.py 2>&1 | tee -a "$O/log.txt" || export VIMSTM_SCAN_BWD=chunk
echo "scan backward: ${VIMSTM_SCAN_BWD:-seq}" | tee -a "$O/log.txt"
RUN=runs/vim_tiny_cifar10
W="$O/vim_tiny_cifar10.safetensors"
WEIGHTS="$W" WARMUP=${WARMUP:-1} MAX_MINUTES=${MAX_MINUTES:-6.3} EPOCHS=${EPOCHS:-6} \
  timeout --signal=SIGABRT 450 bash scripts/train_cifar10.sh .data "$RUN" 2>&1 | tee -a "$O/log.txt" | grep -v "^\s*$" | tail -15
cp "$RUN/log.jsonl" "$O/train_log.jsonl"
[ -f "$W" ] || python -m vimstm.cli export "$RUN/last.pth" --weights ema --dtype fp16 -o "$W"
timeout --signal=SIGABRT 140 python benchmarks/cifar_results.py --checkpoint "$W" \
  --data .data/test.tar.xz --out "$O/results" 2>&1 | tee -a "$O/log.txt" | grep -v Warn | tail -40
echo "== done"

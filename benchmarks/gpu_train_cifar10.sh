#!/usr/bin/env bash
# One device call: train the CIFAR-10 reference model from scratch for as long as the call
# allows, export its EMA weights (fp16 safetensors) and make the training-free results table.
# Run from the repo root on the GPU machine with .data/{train,test}.tar.xz carried.
#   EPOCHS=6 MAX_MINUTES=6.3 bash benchmarks/gpu_train_cifar10.sh
source "$(dirname "$0")/gpu_common.sh"
mkdir -p "$O/results"
# the sequential scan backward: checked against the chunked one on this GPU first
step 120 python benchmarks/gpu_check_bwd.py || export VIMSTM_SCAN_BWD=chunk
echo "scan backward: ${VIMSTM_SCAN_BWD:-seq}"
RUN=runs/vim_tiny_cifar10
W="$O/vim_tiny_cifar10.safetensors"
WEIGHTS="$W" WARMUP=${WARMUP:-1} MAX_MINUTES=${MAX_MINUTES:-6.3} EPOCHS=${EPOCHS:-6} \
  step 450 bash scripts/train_cifar10.sh .data "$RUN"
cp "$RUN/log.jsonl" "$O/train_log.jsonl"
[ -f "$W" ] || python -m vimstm.cli export "$RUN/last.pth" --weights ema --dtype fp16 -o "$W"
step 140 python benchmarks/cifar_results.py --checkpoint "$W" --data .data/test.tar.xz \
  --out "$O/results"
echo "== done"

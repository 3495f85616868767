#!/usr/bin/env bash
# Last device call: the README's main job on the GPU, and the speed target on vim_base.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/log.txt"
timeout 120 python3 -m vimstm.cli demo --data .data/test.tar.xz --workers 8 2>&1 | grep -v Warn | tee -a "$O/log.txt" | tail -12
timeout 90 python3 -m vimstm.cli bench --model vim_base --dtype fp16 --batch-size 256 --warmup 3 --runs 10 \
  --method stm --flops 0.6 --json "$O/bench_vim_base_stm.json" 2>&1 | tee -a "$O/log.txt" | tail -8
echo "== done"

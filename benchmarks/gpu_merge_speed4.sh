#!/usr/bin/env bash
# Merge speed, fused STM step + fused apply, even vs geometric schedules. Writes under $OUT.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
step() { local t=$1; shift; echo "== $*" | tee -a "$O/log.txt"; timeout --signal=SIGABRT "$t" "$@" 2>&1 | tee -a "$O/log.txt" | grep -v "^\s*$" | tail -45; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/log.txt"
step 60 python3 benchmarks/gpu_check_fused.py
M="python3 benchmarks/merge_overhead.py --batch-size 256 --dtype fp16 --runs 20 --no-counts --ratios"
step 150 $M --model vim_tiny --flops 0.6 --every 4 6 8 --shapes even geometric --methods stm prune-top tome --cuda-graph --json "$O/tiny_graph.json"
step 60 $M --model vim_tiny --flops 0.6 --every 6 --shapes geometric --methods stm tome --json "$O/tiny_eager.json"
step 120 $M --model vim_small --flops 0.6 --every 4 6 --shapes even geometric --methods stm tome prune-top --cuda-graph --json "$O/small_graph.json"
echo "== done"

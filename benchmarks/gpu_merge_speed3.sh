#!/usr/bin/env bash
# Merge speed with the fused STM kernels: the issue-4 target rows (flops=0.6), every method at
# ratios 0.2/0.4, eager and CUDA-graph, tiny and small. Writes under $OUT.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
step() { local t=$1; shift; echo "== $*" | tee -a "$O/log.txt"; timeout --signal=SIGABRT "$t" "$@" 2>&1 | tee -a "$O/log.txt" | grep -v "^\s*$" | tail -45; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/log.txt"
step 60 python3 benchmarks/gpu_check_fused.py
M="python3 benchmarks/merge_overhead.py --model vim_tiny --batch-size 256 --dtype fp16 --runs 20 --no-counts --ratios"
step 100 $M --flops 0.6 --every 2 3 4 --methods stm prune-top --cuda-graph --json "$O/tiny_graph.json"
step 120 $M 0.2 0.4 --every 4 --cuda-graph --json "$O/tiny_graph_ratio.json"
step 60 $M --flops 0.6 --every 4 --methods stm --json "$O/tiny_eager.json"
step 90 python3 benchmarks/merge_overhead.py --model vim_small --batch-size 256 --dtype fp16 --runs 10 --no-counts --ratios --flops 0.6 --every 4 --methods stm tome prune-top --cuda-graph --json "$O/small_graph.json"
step 60 python3 benchmarks/gpu_profile_merge.py vim_tiny stm 0.6 4
echo "== done"

#!/usr/bin/env bash
# Second merge-speed call: fused kernels, merge frequency, eager vs graph. Writes under $OUT.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
step() { local t=$1; shift; echo "== $*" | tee -a "$O/log.txt"; timeout --signal=SIGABRT "$t" "$@" 2>&1 | tee -a "$O/log.txt" | grep -v "^\s*$" | tail -45; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/log.txt"
step 60 python3 benchmarks/gpu_check_fused.py
M="python3 benchmarks/merge_overhead.py --model vim_tiny --batch-size 256 --dtype fp16 --runs 20 --no-counts --ratios"
step 120 $M --flops 0.6 --every 3 4 --methods stm prune-top tome random --cuda-graph --json "$O/tiny_graph.json"
step 90 $M --flops 0.6 --every 4 --methods stm prune-top tome --json "$O/tiny_eager.json"
step 120 $M 0.2 0.4 --every 1 4 --cuda-graph --json "$O/tiny_graph_ratio.json"
step 90 python3 benchmarks/merge_overhead.py --model vim_small --batch-size 256 --dtype fp16 --runs 10 --no-counts --ratios --flops 0.6 --every 4 --methods stm tome prune-top --cuda-graph --json "$O/small_graph.json"
step 60 python3 benchmarks/gpu_profile_merge.py vim_tiny stm 0.6 4
echo "== done"

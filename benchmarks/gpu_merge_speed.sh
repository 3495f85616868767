#!/usr/bin/env bash
# One device call: merging speed (issue 4's target) across methods, merge frequency (every=k)
# and eager vs CUDA-graph replay, plus the dense baselines and profiles. Writes under $OUT.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
step() { local t=$1; shift; echo "== $*" | tee -a "$O/log.txt"; timeout --signal=SIGABRT "$t" "$@" 2>&1 | tee -a "$O/log.txt" | grep -v "^\s*$" | tail -45; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/log.txt"
B="python3 -m vimstm.cli bench --batch-size 256 --warmup 5 --runs 20"
step 60 $B --model vim_tiny --dtype fp16
step 60 $B --model vim_tiny --dtype fp32
step 60 $B --model vim_small --dtype fp16
M="python3 benchmarks/merge_overhead.py --model vim_tiny --batch-size 256 --dtype fp16 --runs 20 --no-counts --ratios"
step 150 $M --flops 0.6 --every 1 2 3 4 --cuda-graph --json "$O/tiny_graph.json"
step 100 $M --flops 0.6 --every 1 4 --json "$O/tiny_eager.json"
step 60 $M 0.2 0.4 --every 1 --methods stm --cuda-graph --json "$O/tiny_graph_ratio.json"
step 80 python3 benchmarks/merge_overhead.py --model vim_small --batch-size 256 --dtype fp16 --runs 10 --no-counts --ratios --flops 0.6 --every 1 2 4 --methods stm tome prune-norm --cuda-graph --json "$O/small_graph.json"
step 60 python3 benchmarks/gpu_profile_merge.py vim_tiny
step 60 python3 benchmarks/gpu_profile_train.py --batch-size 256
echo "== done"

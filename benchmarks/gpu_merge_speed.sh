#!/usr/bin/env bash
# One device call: merging speed (issue 4's target) side by side with benchmarks/merge_overhead.py
# (fused-kernel check, then even vs geometric schedules and merge frequency, CUDA graphs and
# eager, vim_tiny and vim_small). The rows of BENCHMARKS.md's "How it got there" table came from
# earlier versions of this script (git history); this is the last one. Writes under $OUT.
source "$(dirname "$0")/gpu_common.sh"
step 60 python benchmarks/gpu_check_fused.py
M="python benchmarks/merge_overhead.py --batch-size 256 --dtype fp16 --runs 20 --no-counts --ratios"
step 150 $M --model vim_tiny --flops 0.6 --every 4 6 8 --shapes even geometric --methods stm prune-top tome --cuda-graph --json "$O/tiny_graph.json"
step 60 $M --model vim_tiny --flops 0.6 --every 6 --shapes geometric --methods stm tome --json "$O/tiny_eager.json"
step 120 $M --model vim_small --flops 0.6 --every 4 6 --shapes even geometric --methods stm tome prune-top --cuda-graph --json "$O/small_graph.json"
step 60 python benchmarks/gpu_profile_merge.py vim_tiny stm 0.6 6
echo "== done"

#!/usr/bin/env bash
# Last device call: the README's main job on the GPU, and the speed target on vim_base.
source "$(dirname "$0")/gpu_common.sh"
step 120 python -m vimstm.cli demo --data .data/test.tar.xz --workers 8
step 90 python -m vimstm.cli bench --model vim_base --dtype fp16 --batch-size 256 --warmup 3 \
  --runs 10 --method stm --flops 0.6 --json "$O/bench_vim_base_stm.json"
echo "== done"

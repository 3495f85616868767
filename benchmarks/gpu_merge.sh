#!/usr/bin/env bash
# Dense vs merged throughput on the GPU machine (speed must hold when the token count shrinks).
set -o pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/vimstm_bench}; mkdir -p "$OUT"
run() { python -m vimstm.cli bench "$@" 2>&1 | grep -v Warn | tee -a "$OUT/merge.txt"; }
run --model vim_tiny --dtype fp16 --batch-size 256 --warmup 5 --runs 20 --method stm --ratio 0.5 \
  --json "$OUT/tiny_fp16_stm50.json"
run --model vim_small --dtype fp32 --batch-size 256 --warmup 5 --runs 20 --method stm --ratio 0.5 \
  --json "$OUT/small_fp32_stm50.json"
run --model vim_small --dtype fp16 --batch-size 256 --warmup 5 --runs 20 --method stm --ratio 0.3 \
  --json "$OUT/small_fp16_stm30.json"
run --model vim_base --dtype fp16 --batch-size 256 --warmup 5 --runs 20 --method stm --ratio 0.5 \
  --json "$OUT/base_fp16_stm50.json"

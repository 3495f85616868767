#!/usr/bin/env bash
# The measurements in BENCHMARKS.md, in one call on the GPU machine (writes under $OUT).
set -o pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/vimstm_bench}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python benchmarks/scan.py --backward --reference --sizes 128,384,197,16 \
  --json "$OUT/scan_main.json" 2>&1 | grep -v Warn | tee "$OUT/scan.txt"
python benchmarks/scan.py --json "$OUT/scan_sizes.json" \
  --sizes 256,384,197,16 128,768,197,16 128,1536,197,16 128,384,99,16 128,384,50,16 64,384,785,16 \
  2>&1 | grep -v Warn | tee -a "$OUT/scan.txt"
python benchmarks/gpu_run.py --out "$OUT" --parts check,bwd,train 2>&1 | grep -v Warn \
  | tee "$OUT/run.txt" | grep -v "rel errs"
mkdir -p "$OUT/bench"
for m in vim_tiny vim_small vim_base; do
  for dt in fp32 fp16; do
    python -m vimstm.cli bench --model $m --dtype $dt --batch-size 256 --warmup 5 --runs 20 \
      --json "$OUT/bench/${m}_${dt}.json" 2>&1 | grep -v Warn | tee -a "$OUT/bench.txt"
  done
done
python -m vimstm.cli bench --model vim_tiny --dtype fp16 --batch-size 256 --cuda-graph \
  --warmup 5 --runs 20 --json "$OUT/bench/vim_tiny_fp16_graph.json" 2>&1 | grep -v Warn \
  | tee -a "$OUT/bench.txt"
python -m vimstm.cli bench --model vim_tiny --dtype bf16 --batch-size 256 --warmup 5 --runs 20 \
  --json "$OUT/bench/vim_tiny_bf16.json" 2>&1 | grep -v Warn | tee -a "$OUT/bench.txt"
python -m vimstm.cli bench --model vim_tiny --dtype fp32 --batch-size 256 --scan-backend reference \
  --warmup 1 --runs 3 --json "$OUT/bench/vim_tiny_fp32_reference.json" 2>&1 | grep -v Warn \
  | tee -a "$OUT/bench.txt"
echo "== summary"; grep -h "^dense\|^device\|^command" "$OUT/bench.txt"

#!/usr/bin/env bash
# One device call: does merging pay on the GPU? (issue 4's speed target), plus a resume check.
# Every step has its own timeout; faulthandler dumps the Python stacks of a step that hangs.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
step() { local t=$1; shift; echo "== $*"; timeout --signal=SIGABRT "$t" "$@" 2>&1 | tee -a "$O/log.txt" | grep -v "^\s*$" | tail -40; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$O/log.txt"
# 1) The target: 40% fewer GFLOPs (flops=0.6 keeps 60%) must give >= 1.5x images/s at batch 256.
for m in stm tome; do
  step 70 python3 -m vimstm.cli bench --model vim_tiny --dtype fp16 --batch-size 256 --warmup 5 --runs 20 --method $m --flops 0.6 --json "$O/bench_tiny_fp16_${m}.json"
done
step 70 python3 -m vimstm.cli bench --model vim_tiny --dtype fp16 --batch-size 256 --warmup 5 --runs 20 --method stm --flops 0.6 --cuda-graph --json "$O/bench_tiny_fp16_stm_graph.json"
step 80 python3 -m vimstm.cli bench --model vim_small --dtype fp16 --batch-size 256 --warmup 5 --runs 20 --method stm --flops 0.6 --json "$O/bench_small_fp16_stm.json"
# 2) Merge overhead of every method at ratios 0.2/0.4 with op and sync counts.
step 90 python3 benchmarks/merge_overhead.py --model vim_tiny --batch-size 256 --dtype fp16 --runs 10 --ratios 0.4 --no-counts --json "$O/merge_overhead.json"
# 3) Resume on the GPU (a 10-minute call hung after resuming a run last session): tiny run.
python3 - <<'PY'
import numpy as np
from pathlib import Path
from PIL import Image
rng = np.random.default_rng(0)
for c in range(10):
    d = Path(f"/tmp/tinyc10/c{c}"); d.mkdir(parents=True, exist_ok=True)
    for j in range(64):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{j}.png")
PY
T="python3 -m vimstm.cli train --model vim_tiny_cifar10 --depth 2 --data /tmp/tinyc10 --output /tmp/rr --batch-size 64 --workers 4 --amp bf16 --no-progress --resume auto --model-ema"
step 60 $T --epochs 1
step 60 $T --epochs 2
step 30 python3 -m vimstm.cli export /tmp/rr/last.pth -o /tmp/rr/w.safetensors
echo "== done"

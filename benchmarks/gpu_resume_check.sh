#!/usr/bin/env bash
# One device call: a training run resumed on the GPU (a 10-minute call hung after resuming a run
# in session 1; this tiny run resumed fine). The merge-speed part this script once had is
# benchmarks/gpu_merge_speed.sh. Writes under $OUT.
source "$(dirname "$0")/gpu_common.sh"
python - <<'PY'
import numpy as np
from pathlib import Path
from PIL import Image
rng = np.random.default_rng(0)
for c in range(10):
    d = Path(f"/tmp/tinyc10/c{c}"); d.mkdir(parents=True, exist_ok=True)
    for j in range(64):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{j}.png")
PY
T="python -m vimstm.cli train --model vim_tiny_cifar10 --depth 2 --data /tmp/tinyc10 --output /tmp/rr --batch-size 64 --workers 4 --amp bf16 --no-progress --resume auto --model-ema"
step 60 $T --epochs 1
step 60 $T --epochs 2
step 30 python -m vimstm.cli export /tmp/rr/last.pth -o /tmp/rr/w.safetensors
echo "== done"

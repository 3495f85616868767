"""Profile one forward of a merged model on the GPU: where does the time go? (top kernels/ops).

    PYTHONPATH=src python benchmarks/gpu_profile_merge.py vim_tiny stm 0.6 4  # model method flops k
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from vimstm.merge import patch
from vimstm.models.registry import create_model

name = sys.argv[1] if len(sys.argv) > 1 else "vim_tiny"
method = sys.argv[2] if len(sys.argv) > 2 else "stm"
flops = float(sys.argv[3]) if len(sys.argv) > 3 else 0.6
every = int(sys.argv[4]) if len(sys.argv) > 4 else 1
m = create_model(name).cuda().eval()
x = torch.randn(256, 3, 224, 224, device="cuda")
patch(m, method=method, flops=flops, every=every)
with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
    for _ in range(3):
        m(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        m(x)
        torch.cuda.synchronize()
ka = prof.key_averages()
print(ka.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))

"""Profile one forward of a merged model on the GPU: where does the time go? (top kernels/ops)."""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from vimstm.merge import patch
from vimstm.models.registry import create_model

name = sys.argv[1] if len(sys.argv) > 1 else "vim_tiny"
m = create_model(name).cuda().eval()
x = torch.randn(256, 3, 224, 224, device="cuda")
patch(m, method="stm", ratio=0.5)
with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
    for _ in range(3):
        m(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        m(x)
        torch.cuda.synchronize()
ka = prof.key_averages()
print(ka.table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=70))
print(ka.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=70))

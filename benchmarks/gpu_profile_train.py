"""Profile training steps of the CIFAR-10 reference model on the GPU: where does time go?

Synthetic batches (no data loading), bf16 autocast, AdamW: prints img/s of the bare step and
the top CUDA kernels, to tell the scan kernels from the matrix products and the rest.

    PYTHONPATH=src python benchmarks/gpu_profile_train.py --batch-size 256
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from vimstm.models.registry import create_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="vim_tiny_cifar10")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    m = create_model(a.model, drop_path_rate=0.1).cuda().train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)
    img = int(m.patch_embed.img_size[0])
    x = torch.randn(a.batch_size, 3, img, img, device="cuda")
    y = torch.randint(0, 10, (a.batch_size,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / a.steps
    print(f"# {a.model} train step batch {a.batch_size} bf16: {dt * 1e3:.1f} ms, "
          f"{a.batch_size / dt:.0f} img/s, {torch.cuda.get_device_name()}")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    print(ka.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()

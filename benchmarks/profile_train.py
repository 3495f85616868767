"""Where a training step spends its time and memory (torch.profiler), for BENCHMARKS.md.

Random images and labels, bf16 autocast, fused AdamW, forward + backward + step, as
``vimstm bench --train``. Prints the step time, the peak memory, the CUDA time by kernel group
and by kernel, and the activations saved for the backward (bytes by dtype and shape, each
storage counted once).

    PYTHONPATH=src python benchmarks/profile_train.py --model vim_tiny --batch-size 256
    PYTHONPATH=src python benchmarks/profile_train.py --model vim_tiny_cifar10 --batch-size 256
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from vimstm.engine.benchmark import training_step
from vimstm.models.registry import create_model
from vimstm.runtime import DTYPES

GROUPS = (  # first match wins
    ("scan backward", r"scan.*bwd|_mixer_bwd|scan_bwd"),
    ("scan forward", r"scan.*fwd|_mixer_fwd|scan_fwd"),
    ("conv1d", r"conv_(fwd|bwd)|conv1d"),
    ("rmsnorm", r"rmsnorm|norm_(fwd|bwd)"),
    ("matmul", r"gemm|sm90_|cutlass|cublas|nvjet|matmul|xmma"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("reduction", r"reduce|sum_|Reduce"),
    ("copy / cast / elementwise", r"elementwise|copy|cast|vectorized|unrolled|fill|cat"),
)


def group_of(name: str) -> str:
    for label, pat in GROUPS:
        if re.search(pat, name, re.IGNORECASE):
            return label
    return "other"


def saved_activation_bytes(model: nn.Module, x, y, amp) -> dict[str, float]:
    """MB of tensors autograd saves in one forward, keyed by dtype and shape (batch kept)."""
    seen: set[tuple[int, int]] = set()
    sizes: collections.Counter[str] = collections.Counter()
    params = {p.data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        key = (st.data_ptr(), st.nbytes())
        if key not in seen and st.data_ptr() not in params:
            seen.add(key)
            sizes[f"{str(t.dtype).replace('torch.', '')} {tuple(t.shape)}"] += st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cuda", dtype=amp):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return {k: v / 2**20 for k, v in sizes.most_common()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vim_tiny")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=25, help="kernels listed")
    p.add_argument("--json", default=None, help="write the numbers here")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("profile_train.py needs a CUDA device", file=sys.stderr)
        return 2
    amp = DTYPES[a.dtype]
    m = create_model(a.model)
    step, x, y = training_step(m, a.batch_size, int(m.patch_embed.img_size[0]), a.dtype,
                               torch.device("cuda"))
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"# {a.model} training step, batch {a.batch_size}, {a.dtype} autocast, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"step {ms:.1f} ms (median of {a.steps}), {a.batch_size / ms * 1e3:.0f} images/s, "
          f"peak {peak:.2f} GiB")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] += e.device_time_total
            counts[e.name] += 1
    total = sum(kernels.values())
    groups: collections.Counter[str] = collections.Counter()
    for name, us in kernels.items():
        groups[group_of(name)] += us
    print(f"\nCUDA time {total / 1e3:.1f} ms in {sum(counts.values())} kernel launches")
    for g, us in groups.most_common():
        print(f"  {g:28s} {us / 1e3:8.2f} ms {100 * us / total:5.1f}%")
    print(f"\ntop {a.top} kernels")
    for name, us in kernels.most_common(a.top):
        print(f"  {us / 1e3:8.2f} ms {counts[name]:5d}x  {name[:100]}")
    saved = saved_activation_bytes(m, x, y, amp)
    print(f"\nsaved for backward: {sum(saved.values()) / 1024:.2f} GiB")
    for k, mb in list(saved.items())[:15]:
        print(f"  {mb:9.1f} MB  {k}")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "model": a.model, "batch_size": a.batch_size, "dtype": a.dtype,
            "device": torch.cuda.get_device_name(), "ms_per_step": ms,
            "images_per_s": a.batch_size / ms * 1e3, "peak_gib": peak,
            "groups_ms": {g: us / 1e3 for g, us in groups.items()},
            "kernels_ms": {n: us / 1e3 for n, us in kernels.most_common(60)},
            "saved_mb": saved,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a training step spends its time and memory (torch.profiler), for BENCHMARKS.md.

Random images and labels, bf16 autocast, fused AdamW, forward + backward + step, as
``vimstm bench --train``. Prints the step time, the peak memory, the CUDA time by kernel group
and by kernel, and the activations saved for the backward (bytes by dtype and shape, each
storage counted once).

    PYTHONPATH=src python benchmarks/profile_train.py --model vim_tiny --batch-size 256
    PYTHONPATH=src python benchmarks/profile_train.py --model vim_tiny_cifar10 --batch-size 256
    PYTHONPATH=src python benchmarks/profile_train.py --model vim_tiny_cifar10 --batch-size 256 \
        --compile reduce-overhead    # the compiled step: Inductor's fused glue is its own group
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
from vimstm.errors import ConfigError
from vimstm.models.registry import create_model
from vimstm.runtime import DTYPES, compile_mode

GROUPS = (  # first match wins
    ("scan backward", r"scan.*bwd|_mixer_bwd|scan_bwd"),
    ("scan forward", r"scan.*fwd|_mixer_fwd|scan_fwd"),
    ("conv1d", r"conv_(fwd|bwd)|conv1d"),
    ("Inductor-fused glue", r"^triton_(poi|red|per)_"),
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


def profile_instance(m: nn.Module, batch_size: int, dtype: str, steps: int,
                     compile: bool | str = False) -> dict:
    """Median step time, peak memory and CUDA time by kernel and group of one training step
    (``compile``: as ``vimstm bench --train --compile``; warm-up includes the compilation)."""
    step, x, y = training_step(m, batch_size, int(m.patch_embed.img_size[0]), dtype,
                               torch.device("cuda"), compile=compile)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    peak = torch.cuda.max_memory_allocated() / 2**30
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] += e.device_time_total
            counts[e.name] += 1
    groups: collections.Counter[str] = collections.Counter()
    for name, us in kernels.items():
        groups[group_of(name)] += us
    return {
        "ms_per_step": ms, "images_per_s": batch_size / ms * 1e3, "peak_gib": peak,
        "step_ms_all": [round(t * 1e3, 2) for t in times],
        "cuda_ms": sum(kernels.values()) / 1e3, "launches": sum(counts.values()),
        "groups_ms": {g: us / 1e3 for g, us in groups.most_common()},
        "kernels_ms": {n: us / 1e3 for n, us in kernels.most_common()},
        "counts": dict(counts), "xy": (x, y),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vim_tiny")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=25, help="kernels listed")
    p.add_argument("--instances", type=int, default=1,
                   help="build and profile the model this many times in turn (fresh weights, "
                        "optimizer and memory each time): shows speed that depends on the "
                        "instance")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="profile the step through torch.compile (default, reduce-overhead, "
                        "max-autotune, ...), as `vimstm bench --train --compile`")
    p.add_argument("--json", default=None, help="write the numbers here")
    a = p.parse_args()
    try:
        mode = compile_mode(a.compile)
    except ConfigError as e:
        print(f"profile_train.py: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("profile_train.py needs a CUDA device", file=sys.stderr)
        return 2
    amp = DTYPES[a.dtype]
    print(f"# {a.model} training step, batch {a.batch_size}, {a.dtype} autocast, "
          f"{'compiled (' + mode + '), ' if mode else ''}"
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"# command: python {' '.join(sys.argv)}")
    runs = []
    for i in range(a.instances):
        torch.manual_seed(0)
        m = create_model(a.model)
        r = profile_instance(m, a.batch_size, a.dtype, a.steps, a.compile)
        label = f"instance {i}: " if a.instances > 1 else ""
        print(f"\n{label}step {r['ms_per_step']:.1f} ms (median of {a.steps}), "
              f"{r['images_per_s']:.0f} images/s, peak {r['peak_gib']:.2f} GiB, "
              f"CUDA time {r['cuda_ms']:.1f} ms in {r['launches']} kernel launches")
        if i == 0:
            for g, ms in sorted(r["groups_ms"].items(), key=lambda kv: -kv[1]):
                print(f"  {g:28s} {ms:8.2f} ms {100 * ms / r['cuda_ms']:5.1f}%")
            print(f"\ntop {a.top} kernels")
            for name, ms in list(r["kernels_ms"].items())[:a.top]:
                print(f"  {ms:8.2f} ms {r['counts'][name]:5d}x  {name[:100]}")
            r["saved_mb"] = saved_activation_bytes(m, *r.pop("xy"), amp)
            print(f"\nsaved for backward: {sum(r['saved_mb'].values()) / 1024:.2f} GiB")
            for k, mb in list(r["saved_mb"].items())[:15]:
                print(f"  {mb:9.1f} MB  {k}")
        r.pop("xy", None)
        runs.append(r)
        del m
        torch.cuda.empty_cache()
    if a.instances > 1:  # which kernels differ between model instances built the same way
        names = set().union(*(r["kernels_ms"] for r in runs))
        spread = sorted(names, key=lambda n: -(max(r["kernels_ms"].get(n, 0) for r in runs)
                                               - min(r["kernels_ms"].get(n, 0) for r in runs)))
        print("\nkernels whose CUDA time differs most between instances (ms per step)")
        for n in spread[:a.top]:
            print("  " + " ".join(f"{r['kernels_ms'].get(n, 0):8.2f}" for r in runs)
                  + f"  {n[:90]}")
    if a.json:
        first = runs[0]
        Path(a.json).write_text(json.dumps({
            "model": a.model, "batch_size": a.batch_size, "dtype": a.dtype,
            "device": torch.cuda.get_device_name(), "command": " ".join(sys.argv),
            "ms_per_step": first["ms_per_step"], "images_per_s": first["images_per_s"],
            "peak_gib": first["peak_gib"], "groups_ms": first["groups_ms"],
            "kernels_ms": dict(list(first["kernels_ms"].items())[:60]),
            "saved_mb": first["saved_mb"],
            "instances": [{k: v for k, v in r.items() if k not in ("counts", "saved_mb")}
                          for r in runs] if a.instances > 1 else None,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

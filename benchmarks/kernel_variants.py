"""Training-step speed of Triton kernel configurations side by side, in one process.

Each variant replaces fields of :data:`vimstm.ops.triton_scan.CONFIG` (a
:class:`~vimstm.ops.triton_scan.KernelConfig`), builds the model afresh and times forward +
backward + fused AdamW as ``vimstm bench --train`` does (bf16 autocast, median of the timed
steps), then the CUDA time of the scan kernels per step (torch.profiler). The first variant is
timed again at the end, so drift between the first and last run shows in the table.

    PYTHONPATH=src python benchmarks/kernel_variants.py --model vim_tiny_cifar10 \\
        --batch-size 256 --variant default: --variant s16:save_every=16 \\
        --variant save8:save_every=8 --json results/h100/kernel_variants.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from vimstm.engine.benchmark import measure_training, training_step
from vimstm.models.registry import create_model
from vimstm.ops import triton_scan


def gpu_ready(script: str, why: str, json_path: Path | None) -> bool:
    """Whether a CUDA GPU is here (if not, one line naming ``script`` and ``why`` it needs one);
    the ``--json`` file's folder is created first."""
    if not torch.cuda.is_available():
        print(f"{script} needs a CUDA GPU ({why})")
        return False
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
    return True


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, integer fields of KernelConfig)."""
    name, _, body = text.partition(":")
    fields = [f.name for f in dataclasses.fields(triton_scan.KernelConfig)]
    out: dict = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in fields or not value.isdigit():
            raise SystemExit(f"--variant {text}: expected field=integer with a KernelConfig "
                             f"field ({', '.join(fields)})")
        out[key] = int(value)
    return name or "default", out


def scan_ms(model: torch.nn.Module, batch_size: int, img_size: int, steps: int = 3) -> dict:
    """CUDA milliseconds per training step of each scan and conv1d kernel (profiler)."""
    step, _, _ = training_step(model, batch_size, img_size, "bf16", torch.device("cuda"))
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    out = {e.key: round(e.device_time_total / steps / 1e3, 2)
           for e in prof.key_averages() if "scan" in e.key or "conv" in e.key}
    out["all kernels"] = round(sum(e.device_time_total for e in prof.key_averages()
                                   if e.device_type.name == "CUDA") / steps / 1e3, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vim_tiny_cifar10")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--variant", action="append", default=[],
                    help="name:field=value,... of KernelConfig (repeatable; 'default:' for "
                         "the shipped configuration)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not gpu_ready("kernel_variants", "the Triton kernels are what it times", args.json):
        return 2
    variants = [parse_variant(v) for v in (args.variant or ["default:"])]
    variants.append((variants[0][0] + " (again)", variants[0][1]))
    base = triton_scan.CONFIG
    print(f"{torch.cuda.get_device_name()}, bf16, batch {args.batch_size}, {args.model}, "
          f"median of {args.runs} steps; command: {' '.join(sys.argv)}")
    rows = {}
    for name, fields in variants:
        triton_scan.CONFIG = dataclasses.replace(base, **fields)
        torch.manual_seed(0)
        model = create_model(args.model)
        try:
            r = measure_training(model, batch_size=args.batch_size, dtype="bf16",
                                 device="cuda", warmup=3, runs=args.runs)
            r["scan_ms"] = scan_ms(model, args.batch_size, model.patch_embed.img_size[0])
        except Exception as e:  # one variant that fails to compile or launch: go on
            print(f"{name:24s} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                  flush=True)
            rows[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            del model
            torch.cuda.empty_cache()
            continue
        r["config"] = dataclasses.asdict(triton_scan.CONFIG)
        rows[name] = r
        print(f"{name:24s} {r['images_per_s']:8.1f} img/s  {r['ms_per_batch']:7.2f} ms  "
              f"peak {r['peak_mem_mb'] / 1024:6.2f} GiB  {r['scan_ms']}", flush=True)
        del model
        torch.cuda.empty_cache()
    triton_scan.CONFIG = base
    if args.json is not None:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                         "model": args.model, "batch_size": args.batch_size,
                                         "command": " ".join(sys.argv), "variants": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

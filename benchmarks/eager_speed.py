"""Eager speed-up of merged models, what ``model(x)``, ``vimstm eval`` and ``sweep`` get.

For each model, in one process: the dense model (eager), the merged model as ``vimstm.patch``
leaves it (CUDA-graph replay inside, the default), and the merged model with ``graphs=False``
(plain eager); the images/s of each, the speed-up over dense eager and that speed-up over the
GFLOPs reduction factor (target: >= 0.9). Random input, no_grad, median of timed batches, as
``vimstm bench``.

    python benchmarks/eager_speed.py --models vim_tiny vim_small vim_base --dtype fp16 \\
        --batch-size 256 --flops 0.6 --json results/h100/eager_speed.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

import vimstm
from vimstm.engine.benchmark import measure_throughput
from vimstm.flops import count_flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vim_tiny", "vim_small", "vim_base"])
    ap.add_argument("--dtype", default="fp16", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--method", default="stm")
    ap.add_argument("--flops", type=float, default=0.6, help="fraction of dense GFLOPs kept")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    kw = dict(batch_size=args.batch_size, dtype=args.dtype, device=args.device,
              warmup=args.warmup, runs=args.runs, cuda_graph=False)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print("command:", " ".join(["python", *sys.argv]))
    print(f"device: {name}  dtype: {args.dtype}  batch: {args.batch_size}  method: "
          f"{args.method} at {args.flops:.0%} of the dense GFLOPs")
    print(f"{'model':10s} {'variant':14s} {'GMACs':>7s} {'images/s':>10s} {'spread':>7s} "
          f"{'speed-up':>8s} {'share':>6s}")
    out = []
    for model_name in args.models:
        dense = vimstm.create_model(model_name).to(dev).eval()
        variants = [("dense eager", dense),
                    ("merged", vimstm.patch(copy.deepcopy(dense), method=args.method,
                                            flops=args.flops)),
                    ("merged eager", vimstm.patch(copy.deepcopy(dense), method=args.method,
                                                  flops=args.flops, graphs=False))]
        base = None
        gd = count_flops(dense).gmacs_literature
        for label, m in variants:
            r = measure_throughput(m, desc=f"{model_name} {label}", **kw)
            g = count_flops(m).gmacs_literature
            base = base or r["images_per_s"]
            speedup = r["images_per_s"] / base
            share = speedup / (gd / g)  # as `vimstm bench`: speed-up over the GFLOPs cut
            print(f"{model_name:10s} {label:14s} {g:7.3f} {r['images_per_s']:10.1f} "
                  f"{r['spread']:7.1%} {speedup:7.2f}x {share:6.2f}", flush=True)
            out.append({"model": model_name, "variant": label, "gmacs_literature": g,
                        "speedup": speedup, "share_of_reduction": share,
                        **r})
        del variants, dense
        torch.cuda.empty_cache() if dev.type == "cuda" else None
    print("share: speed-up / (dense GFLOPs / merged GFLOPs), as `vimstm bench` prints it; "
          "target >= 0.9 for the merged rows")
    if args.json:
        from vimstm.models.checkpoint import atomic_write

        atomic_write(args.json, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The reference model's results table: dense vs every method, training-free (RESULTS.md).

Loads the test split once onto the device, then for each configuration patches the model,
measures top-1 over the whole split (bf16 autocast), the GMACs (both conventions) and the
images/s at batch 256 (fp16, CUDA-graph replay on CUDA: the eager model is host-bound, see
BENCHMARKS.md), and writes JSON + CSV rows (and a PNG of accuracy against GMACs and images/s).

Configurations (default schedule: merges after blocks 6, 12, 18, geometric): dense; every
method at ratio 0.2 and 0.4 and at flops 0.6 (the GFLOPs-matched point); STM ablations (no
protection, no fading, gamma fading, size weights, B similarity) at flops 0.6; and ToMe's
per-block constant schedule (every=1, even) at flops 0.6 for stm, prune-top and random.
``--schedule per-block`` writes the same table with ToMe's per-block schedule everywhere
(ablations at ratio 0.4; the last rows: the default schedule, every=6 geometric, at flops 0.6)
as ``cifar_results_perblock.{json,csv}``.

    PYTHONPATH=src python benchmarks/cifar_results.py --checkpoint W.safetensors \\
        --data .data/test.tar.xz --out results/cifar10 [--schedule per-block]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

import vimstm
from vimstm.data import build_eval_loader
from vimstm.engine.benchmark import measure_throughput
from vimstm.engine.evaluate import evaluate
from vimstm.flops import count_flops
from vimstm.merge import METHODS

PER_BLOCK = {"every": 1, "shape": "even"}  # ToMe's constant per-block schedule
DEFAULT_24 = {"every": 6, "shape": "geometric"}  # the default schedule of a 24-block model


def configs(methods: list[str], per_block: bool = False) -> list[tuple[str, str, dict]]:
    """(label, method, patch kwargs) in table order (the main schedule unless labelled)."""
    main = PER_BLOCK if per_block else {}
    out: list[tuple[str, str, dict]] = [("dense", "dense", {})]
    for target in ({"ratio": 0.2}, {"ratio": 0.4}, {"flops": 0.6}):
        for m in methods:
            extra = {"seed": 0} if m == "random" else {}
            key, val = next(iter(target.items()))
            out.append((f"{m} {key}={val}", m, {**target, **main, **extra}))
    ablate = "ratio=0.4" if per_block else "flops=0.6"
    at = {"ratio": 0.4} if per_block else {"flops": 0.6}
    for name, opts in (("protect=0", {"protect": 0}), ("fading=none", {"fading": "none"}),
                       ("fading=gamma", {"fading": "gamma"}), ("weights=size", {"weights": "size"}),
                       ("similarity=b", {"similarity": "b"})):
        out.append((f"stm {ablate} {name}", "stm", {**at, **main, **opts}))
    other, name = (DEFAULT_24, "every=6 geometric") if per_block else (PER_BLOCK, "every=1 even")
    for m in ("stm", "tome", "prune-top") if per_block else ("stm", "prune-top", "random"):
        extra = {"seed": 0} if m == "random" else {}
        out.append((f"{m} flops=0.6 {name}", m, {"flops": 0.6, **other, **extra}))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vim_tiny_cifar10")
    p.add_argument("--checkpoint", default=None, help="weights (default: the bundled ones)")
    p.add_argument("--data", required=True, help="CIFAR-10 test split (folder or tar)")
    p.add_argument("--out", default="results")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--limit", type=int, default=None, help="evaluate only N images")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--bench-batch", type=int, default=256)
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--depth", type=int, default=None, help="override (quick CPU runs)")
    p.add_argument("--random-init", action="store_true", help="no weights (smoke tests)")
    p.add_argument("--schedule", choices=("default", "per-block"), default="default",
                   help="the schedule of the main rows (per-block: ToMe's every=1 even)")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    over = {} if args.depth is None else {"depth": args.depth}
    model = vimstm.create_model(args.model, checkpoint=args.checkpoint,
                                pretrained=args.checkpoint is None and not args.random_init,
                                **over).to(dev).eval()
    loader = build_eval_loader(args.data, model, batch_size=args.batch_size, workers=4,
                               limit=args.limit)
    # images stay on the device across configurations; labels on the host, as evaluate() wants
    batches = [(x.to(dev), y) for x, y, _ in loader]
    n = sum(len(y) for _, y in batches)
    amp = "bf16" if dev.type == "cuda" else None
    on_gpu = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if on_gpu else "cpu"
    print(f"# {args.model} on {n} test images, {name}, torch {torch.__version__}")
    print("# " + " ".join(["python", *sys.argv]))

    rows = []
    dense_ips = None
    for label, method, kw in configs(args.methods.split(","), args.schedule == "per-block"):
        vimstm.unpatch(model)
        if method != "dense":
            try:
                vimstm.patch(model, method=method, **kw)
            except vimstm.ConfigError as e:
                print(f"# {label}: {e}")
                continue
        t0 = time.perf_counter()
        top1 = float(evaluate(model, batches, dev, amp=amp, progress=False)["top1"])
        rep = count_flops(model)
        row = {"label": label, "method": method, **{k: v for k, v in kw.items() if k != "seed"},
               "top1": round(top1, 2), "gmacs": round(rep.gmacs_literature, 4),
               "gmacs_full": round(rep.gmacs_full, 4),
               "mean_token_reduction": round(rep.mean_token_reduction, 4),
               "token_ratio": round(rep.token_ratio, 4),
               "final_tokens": int(model.merge_info.get("tokens_per_block", [0])[-1])
               if method != "dense" else int(model.patch_embed.num_patches + 1),
               "eval_s": round(time.perf_counter() - t0, 1)}
        if not args.no_bench and on_gpu:
            thr = measure_throughput(model, batch_size=args.bench_batch, dtype="fp16", device=dev,
                                     warmup=3, runs=10, cuda_graph=True)
            row["images_per_s"] = round(thr["images_per_s"], 1)
            dense_ips = dense_ips or row["images_per_s"]
            row["speedup"] = round(row["images_per_s"] / dense_ips, 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "cifar_results" if args.schedule == "default" else "cifar_results_perblock"
    (out / f"{stem}.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                       indent=1))
    keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k)
                  if k in rows[0] else 99)
    with open(out / f"{stem}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

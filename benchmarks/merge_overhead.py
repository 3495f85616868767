"""What token merging costs: dense vs patched forwards, GFLOPs vs images/s, ops and syncs.

For the dense model and every (method, ratio), prints the tokens entering each block, the GMACs
(literature convention, :func:`vimstm.flops.count_flops`), the median images/s
(:func:`vimstm.engine.benchmark.measure_throughput`: synchronised, warm-up first), the speed-up
over dense next to the GFLOPs reduction (``eff`` = speed-up / (dense GMACs / GMACs): the issue's
target is eff >= 0.9 on an H100 at batch 256), and per forward: the merge kernels per step, the
SSM-statistics kernels per call, host syncs, host-made tensors and host-to-device copies
(:func:`vimstm.merge.opcount.count_ops`; on a CPU the host-to-device numbers come from a
fake-CUDA run, which needs no GPU).

    python benchmarks/merge_overhead.py --depth 6 --batch-size 4 --device cpu      # here
    python benchmarks/merge_overhead.py --batch-size 256 --dtype fp16 --device cuda   # H100
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time

import torch

from vimstm.engine.benchmark import measure_throughput
from vimstm.errors import ConfigError
from vimstm.flops import count_flops
from vimstm.merge import METHODS, patch, unpatch
from vimstm.merge.opcount import count_ops
from vimstm.models.registry import create_model
from vimstm.runtime import DTYPES


def _tokens(tokens: list[int]) -> str:
    """197,189,...,99 -> "197>189>...>99" shortened to first, second, last."""
    if len(set(tokens)) == 1:
        return f"{tokens[0]} (all)"
    return f"{tokens[0]}>{tokens[1]}>..>{tokens[-1]}"


def hook_ms(model, x, amp, reps: int = 5) -> tuple[float, float]:
    """Median ms per forward spent in the merger's hooks and in the mixers' ``_stats``.

    Wall time around each call, synchronised on CUDA: on a CPU the whole cost of the
    bookkeeping, on a GPU its launch plus run time (the hooks' kernels are waited for).
    """
    dev = x.device
    spent = {"merge": 0.0, "stats": 0.0}

    def timed(obj, attr, key):
        fn = getattr(obj, attr)

        def wrapped(*a, **k):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            spent[key] += time.perf_counter() - t0
            return out

        setattr(obj, attr, wrapped)

    merger = getattr(model, "merger", None)
    objs = [(layer.mixer, "_stats", "stats") for layer in model.layers]
    if merger is not None:
        objs += [(merger, h, "merge") for h in ("begin", "step", "end")]
    for o, a, k in objs:
        timed(o, a, k)
    merge, stats = [], []
    try:
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            for _ in range(reps + 1):
                spent["merge"] = spent["stats"] = 0.0
                model(x)
                merge.append(spent["merge"] * 1e3)
                stats.append(spent["stats"] * 1e3)
    finally:
        for o, a, _ in objs:
            o.__dict__.pop(a, None)
    return statistics.median(merge[1:]), statistics.median(stats[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vim_tiny")
    p.add_argument("--depth", type=int, default=None, help="override the depth (a quick run)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scan-backend", default="auto")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--ratios", nargs="*", type=float, default=[0.2, 0.4])
    p.add_argument("--flops", nargs="*", type=float, default=[],
                   help="also schedules that keep these fractions of the dense GMACs")
    p.add_argument("--every", nargs="+", type=int, default=[1],
                   help="merge after every k-th block only (one row per k)")
    p.add_argument("--shapes", nargs="+", default=["even"], choices=["even", "geometric"],
                   help="how ratio/flops totals are spread over the steps (one row per shape)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--cuda-graph", action="store_true", help="replay a CUDA graph (CUDA only)")
    p.add_argument("--no-counts", action="store_true", help="skip the op/sync counts")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    if args.device == "cpu":  # the reference scan's decays reach denormals: slow, noisy timings
        torch.set_flush_denormal(True)
    over = {} if args.depth is None else {"depth": args.depth}
    model = create_model(args.model, scan_backend=args.scan_backend, **over).eval()
    dev = torch.device(args.device)
    model = model.to(dev)
    amp = DTYPES[args.dtype] if args.dtype != "fp32" else None
    img = int(model.patch_embed.img_size[0])
    probe = torch.randn(min(args.batch_size, 2), 3, img, img, device=dev)
    img_tokens = model.patch_embed.num_patches + 1
    print(f"# {args.model} depth {len(model.layers)}, batch {args.batch_size}, {args.dtype}, "
          f"{args.device} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}),"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("# " + " ".join([sys.executable.split("/")[-1], *sys.argv]))

    def measure(name: str, ratio: float, sched: str = "", every: int = 1) -> dict:
        rep = count_flops(model)
        thr = measure_throughput(model, batch_size=args.batch_size, dtype=args.dtype,
                                 device=dev, warmup=args.warmup, runs=args.runs,
                                 cuda_graph=args.cuda_graph)
        row = {"method": name, "ratio": ratio, "schedule": sched or f"ratio={ratio}",
               "every": every, "cuda_graph": args.cuda_graph, "gmacs": rep.gmacs_literature,
               "tokens_per_block": list(rep.tokens_per_block),
               "images_per_s": thr["images_per_s"], "ms_per_batch": thr["ms_per_batch"]}
        xb = torch.randn(args.batch_size, 3, img, img, device=dev)
        row["merge_ms"], row["stats_ms"] = hook_ms(model, xb, amp if dev.type == "cuda" else None)
        if not args.no_counts:
            c = count_ops(model, probe, amp_dtype=amp if dev.type == "cuda" else None)
            row |= {"merge_kernels_per_step": c.per_step("merge"),
                    "stats_kernels_per_call": c.per_step("stats"),
                    "model_kernels": c.kernels["model"], "syncs": c.total("syncs"),
                    "host_tensors": c.total("host_tensors"), "h2d_copies": c.total("h2d_copies")}
            if dev.type == "cpu":  # where a GPU would copy from the host: a fake-CUDA run
                try:
                    f = count_ops(model, probe, fake_device="cuda", amp_dtype=amp)
                except Exception as e:  # e.g. a CUDA random generator: needs a real GPU
                    print(f"# {name} {ratio}: no fake-CUDA count ({type(e).__name__})")
                    row["h2d_copies"] = -1
                else:
                    row["host_tensors"] = max(row["host_tensors"], f.total("host_tensors"))
                    row["h2d_copies"] = f.total("h2d_copies")
                    row["syncs"] = max(row["syncs"], f.total("syncs"))
        return row

    # one untimed pass first: the first forwards of a process pay one-off costs (allocator,
    # kernel selection) that would otherwise land on the dense row
    measure_throughput(model, batch_size=args.batch_size, dtype=args.dtype, device=dev,
                       warmup=args.warmup, runs=1)
    rows = [measure("dense", 0.0, "dense")]
    dense = rows[0]
    targets = [("ratio", v) for v in args.ratios] + [("flops", v) for v in args.flops]
    for method in args.methods:
        for kind, value in targets:
            for every, shape in itertools.product(args.every, args.shapes):
                opts = {"seed": 0} if method == "random" else {}
                try:
                    patch(model, method=method, every=every, shape=shape, **{kind: value},
                          **opts)
                except ConfigError as e:  # e.g. not reachable with so few steps
                    print(f"# {method} {kind}={value} every={every} {shape}: {e}")
                    continue
                try:
                    toks = model.merger.simulate(img_tokens, img_tokens // 2)[0]
                    ratio = round(1 - (toks[-1] - 1) / (img_tokens - 1), 3)
                    sched = f"{kind}={value}" + ("g" if shape == "geometric" else "")
                    rows.append(measure(method, ratio, sched, every))
                finally:
                    unpatch(model)

    head = (f"{'method':10s} {'schedule':>10s} {'k':>2s} {'ratio':>5s} {'tokens/block':>16s} "
            f"{'GMACs':>7s} {'img/s':>9s} "
            f"{'speedup':>7s} {'flops x':>7s} {'eff':>5s} {'merge ms':>8s} {'stats ms':>8s} "
            f"{'merge k/step':>12s} "
            f"{'stats k/call':>12s} {'syncs':>5s} {'host':>4s} {'h2d':>4s}")
    print(head)
    for r in rows:
        speed = r["images_per_s"] / dense["images_per_s"]
        fx = dense["gmacs"] / r["gmacs"]
        r["speedup"], r["flops_reduction_x"], r["efficiency"] = speed, fx, speed / fx
        counts = ("" if args.no_counts else
                  f" {r['merge_kernels_per_step']:12.1f} {r['stats_kernels_per_call']:12.1f} "
                  f"{r['syncs']:5d} {r['host_tensors']:4d} {r['h2d_copies']:4d}")
        print(f"{r['method']:10s} {r.get('schedule', ''):>10s} {r.get('every', 1):2d} "
              f"{r['ratio']:5.2f} {_tokens(r['tokens_per_block']):>16s} "
              f"{r['gmacs']:7.3f} {r['images_per_s']:9.1f} {speed:6.2f}x {fx:6.2f}x "
              f"{speed / fx:5.2f} {r['merge_ms']:8.2f} {r['stats_ms']:8.2f}" + counts)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

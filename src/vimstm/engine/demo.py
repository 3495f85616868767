"""``vimstm demo``: the bundled CIFAR-10 Vision Mamba, dense and with STM, in one table.

Top-1 on the 1,000 CIFAR-10 test images shipped inside the package (no download), or on
``--data`` (class folders or an archive of them), then GFLOPs and images/s. On a CPU the demo
evaluates an evenly spread subset sized to finish within about a minute (``--limit`` to choose),
and the speed is the median time of the evaluated batches themselves; on CUDA it evaluates every
image and times the forward with CUDA-graph replay, as ``vimstm bench`` does. A speed-up whose
timings spread too widely to support it is marked as such.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from typing import Any

import torch
from torch import nn

from vimstm.data import spread_subset
from vimstm.engine.benchmark import SPREAD_LIMIT, measure_throughput, relative_spread
from vimstm.errors import ConfigError, VimstmError

MODEL = "vim_tiny_cifar10"
CPU_BATCH = 8
CPU_EVAL_SECONDS = 40.0  # evaluation budget of the default CPU run (the whole demo: ~1 minute)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="dense vs STM on the bundled CIFAR-10 model: top-1, GFLOPs, images/s",
        description="Evaluate the bundled vim_tiny_cifar10 dense and with STM at 20% and 40% "
                    "token reduction on the CIFAR-10 test images shipped with vimstm, and print "
                    "one table.",
    )
    p.add_argument("--data", default=None,
                   help="evaluate on these CIFAR-10 test images instead (class folders or a "
                        ".tar/.tar.xz of them)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate N images spread evenly over the classes (default: all on "
                        "CUDA; on a CPU as many as fit about 40 s)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4],
                   help="token-reduction ratios (default 0.2 0.4)")
    p.add_argument("--method", default="stm", help="merging method to compare with dense")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="precision (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default: 256 on CUDA, {CPU_BATCH} on the CPU")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes for --data")
    p.add_argument("--speed-runs", type=int, default=30,
                   help="timed CUDA-graph replays per speed measurement on CUDA (default 30)")
    p.add_argument("--require-weights", action="store_true",
                   help="fail when the bundled weights are missing instead of falling back to "
                        "speed and FLOPs of the untrained architecture")
    p.set_defaults(func=run)


def load_bundled(device: torch.device | str = "cpu") -> nn.Module:
    """The bundled CIFAR-10 model, or a clear error saying how to make it."""
    from vimstm.models.registry import create_model, get_spec, weights_dir

    spec = get_spec(MODEL)
    if spec.bundled_path is None:
        path = weights_dir() / (spec.weights or "")
        raise VimstmError(
            f"the bundled weights {path} are missing. Train them with "
            "`bash scripts/train_cifar10.sh /path/to/cifar10` (see its header; it ends with "
            f"`vimstm export RUN/last.pth -o {path}`), or reinstall vimstm"
        )
    return create_model(MODEL, pretrained=True).to(device).eval()


def untrained_model(device: torch.device | str = "cpu") -> nn.Module:
    """The bundled model's architecture with random weights (speed and FLOPs only)."""
    from vimstm.models.registry import create_model

    torch.manual_seed(0)
    return create_model(MODEL).to(device).eval()


def open_test_data(model: nn.Module, data: str | None) -> Any:
    """``--data`` (checked to hold the CIFAR-10 classes) or the embedded 1,000 test images."""
    from vimstm.data import check_classes, demo_cifar10, model_transform, open_dataset

    tf = model_transform(model)
    if data is None:
        return demo_cifar10(tf)
    ds = open_dataset(data, transform=tf)
    check_classes(ds.classes, f"the bundled {MODEL}", expected=CIFAR10_CLASSES, data=str(data))
    return ds


def timing_stats(seconds: list[float], batch: int) -> tuple[float, float]:
    """(median images/s, relative interquartile range of the times) of timed batches."""
    ts = sorted(seconds)
    med = ts[len(ts) // 2] if len(ts) % 2 else (ts[len(ts) // 2 - 1] + ts[len(ts) // 2]) / 2
    return batch / med, relative_spread(ts)


def _gflops(model: nn.Module) -> float:
    return float(_point(model)["gmacs_literature"])


def _point(model: nn.Module) -> dict[str, Any]:
    from vimstm.flops import operating_point

    return operating_point(model)


def auto_limit(model: nn.Module, total: int, batch: int, cost: float,
               budget: float = CPU_EVAL_SECONDS) -> int:
    """Images (a multiple of 10, at least 10) whose evaluation in every setting fits ``budget``
    seconds, from one timed batch of the dense model; ``cost`` is the summed GFLOPs of all
    settings over the dense GFLOPs."""
    x = torch.randn(batch, *model.default_cfg["input_size"])  # type: ignore[index]
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(x)
        per_image = (time.perf_counter() - t0) / batch
    n = int(budget / max(per_image * cost, 1e-9)) // 10 * 10
    return max(10, min(total, n))


def demo_rows(dense: nn.Module, dataset: Any, method: str, ratios: list[float],
              device: torch.device, dtype: str, batch_size: int, workers: int,
              speed_runs: int) -> list[dict[str, Any]]:
    """One row per setting: method, ratio, top1 (or None), gflops, images_per_s, spread,
    speedup. On CUDA speed comes from CUDA-graph replays on random input; elsewhere from the
    evaluated batches (the first one, a warm-up, left out) or, without data, three timed runs."""
    from vimstm.data import collate_skip
    from vimstm.engine.evaluate import evaluate
    from vimstm.merge import patch

    loader = None
    if dataset is not None:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                             num_workers=workers, collate_fn=collate_skip,
                                             pin_memory=device.type == "cuda")
    rows: list[dict[str, Any]] = []
    for ratio in [0.0, *ratios]:
        label = "dense" if ratio == 0 else f"{method} {ratio:.0%}"
        model = dense if ratio == 0 else patch(copy.deepcopy(dense), method=method, ratio=ratio)
        model = model.to(device).eval()
        top1, times = None, []
        if loader is not None:
            amp = None if dtype == "fp32" else dtype
            top1 = evaluate(model, loader, device=device, amp=amp, progress=True, desc=label,
                            batch_seconds=times)["top1"]
        if device.type == "cuda" or len(times) < 4:
            runs = speed_runs if device.type == "cuda" else 3
            r = measure_throughput(model, batch_size=batch_size, dtype=dtype, device=device,
                                   warmup=max(1, runs // 3), runs=runs,
                                   cuda_graph=device.type == "cuda", desc=f"{label} speed")
            ips, spread = float(r["images_per_s"]), float(r["spread"])
        else:
            ips, spread = timing_stats(times[1:], batch_size)
        point = _point(model)
        rows.append({"method": "dense" if ratio == 0 else method, "ratio": ratio, "top1": top1,
                     "gflops": point["gmacs_literature"], "gflops_full": point["gmacs_full"],
                     "mean_token_reduction": point["mean_token_reduction"],
                     "tokens_last_block": point["tokens_last_block"],
                     "images_per_s": ips, "spread": spread,
                     "speedup": ips / rows[0]["images_per_s"] if rows else 1.0})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'method':<8} {'ratio':>6} {'top-1 %':>8} {'mean red.':>9} {'last':>5} "
            f"{'GFLOPs*':>8} {'full**':>7} {'images/s':>10} {'speed-up':>9}")
    lines = [head, "-" * len(head)]
    rough = False
    for r in rows:
        top1 = "n/a" if r["top1"] is None else f"{r['top1']:.2f}"
        gf = "n/a" if r["gflops"] is None else f"{r['gflops']:.3g}"
        noisy = max(r["spread"], rows[0]["spread"]) > SPREAD_LIMIT
        rough |= noisy
        speedup = f"{r['speedup']:.2f}x" + ("?" if noisy else " ")
        full = "n/a" if r.get("gflops_full") is None else f"{r['gflops_full']:.3g}"
        red = "n/a" if r.get("mean_token_reduction") is None else \
            f"{r['mean_token_reduction']:.0%}"
        lines.append(f"{r['method']:<8} {r['ratio']:>6.0%} {top1:>8} {red:>9} "
                     f"{r.get('tokens_last_block', ''):>5} {gf:>8} {full:>7} "
                     f"{r['images_per_s']:>10.1f} {speedup:>9}")
    lines.append("ratio: patch tokens gone by the last block; mean red.: mean share removed before "
                 "each block (the papers' reduction ratio); last: tokens entering the last block")
    lines.append("* GMACs of one scan direction, the Vision Mamba papers' FLOPs convention; "
                 "** both directions, what the model runs")
    if rough:
        lines.append(f"? the batch times spread by more than {SPREAD_LIMIT:.0%} (interquartile "
                     "range / median; other processes on this machine?): that speed-up is not "
                     "supported by the timing; rerun on an idle machine")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if any(not 0 < r < 1 for r in args.ratios):
        raise ConfigError("--ratios must lie strictly between 0 and 1, e.g. 0.2 0.4")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    if args.speed_runs < 1:
        raise ConfigError("--speed-runs must be at least 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is visible")
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    cpu = device.type == "cpu"
    batch = args.batch_size or (CPU_BATCH if cpu else 256)
    workers = max(0, min(args.workers, os.cpu_count() or 1)) if args.data else 0
    try:
        model = load_bundled(device)
    except VimstmError as e:
        if args.require_weights:
            raise
        print(f"NOTE: {e}.\nFalling back to the untrained {MODEL} architecture (random "
              "weights): the table reports speed and FLOPs only, no accuracy.")
        model = untrained_model(device)
        dataset = None
    else:
        dataset = open_test_data(model, args.data)
    if dataset is not None:
        total = len(dataset)
        limit = args.limit
        if limit is None and cpu:
            from vimstm.merge import patch

            cost = sum(_gflops(patch(copy.deepcopy(model), method=args.method, ratio=r))
                       for r in args.ratios) / _gflops(model) + 1.0
            limit = auto_limit(model, total, batch, cost)
        if limit is not None:  # evenly spread: the images are sorted by class
            dataset = spread_subset(dataset, limit)
        where = args.data or "the embedded CIFAR-10 test set (vimstm/assets)"
        note = ("; evenly spread, as many as fit ~40 s on this CPU: --limit N for more"
                if cpu and args.limit is None and len(dataset) < total else "")
        print(f"evaluating {len(dataset)} of {total} images of {where}{note}")
    rows = demo_rows(model, dataset, args.method, list(args.ratios), device, dtype,
                     batch, workers, args.speed_runs)
    if cpu:
        name = f"CPU ({torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)})"
    else:
        name = torch.cuda.get_device_name(device)
    print(f"\n{MODEL} on {name}, {dtype}, batch {batch}")
    print(format_table(rows))
    if dataset is not None and rows[0]["top1"] is not None:
        print(top1_error_note(rows[0]["top1"], len(dataset)))
    return 0


def top1_error_note(top1: float, n: int) -> str:
    """How far a top-1 measured on ``n`` images may be from the whole set's (one std. error)."""
    p = top1 / 100
    se = 100 * (p * (1 - p) / max(n, 1)) ** 0.5
    return (f"top-1 on {n} images: one standard error is about {se:.1f} points, so differences "
            f"between rows below ~{2 * se:.0f} points are noise (--limit N for more images)")

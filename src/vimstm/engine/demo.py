"""``vimstm demo``: the bundled CIFAR-10 Vision Mamba, dense and with STM, in one table.

With ``--data DIR_OR_TAR`` (class folders or an archive of them) or ``--download`` (torchvision's
CIFAR-10 test split, into a cache folder) it measures top-1; with neither it says so and reports
speed and FLOPs only. Speed is images/s on random input at the evaluation batch size.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vimstm.errors import ConfigError, DataError, VimstmError

MODEL = "vim_tiny_cifar10"
CPU_LIMIT, CPU_SPEED_BATCH = 100, 8  # the reference scan takes seconds per image on a CPU
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="dense vs STM on the bundled CIFAR-10 model: top-1, GFLOPs, images/s",
        description="Evaluate the bundled vim_tiny_cifar10 dense and with STM at 20%% and 40%% "
                    "token reduction on the CIFAR-10 test split, and print one table.",
    )
    p.add_argument("--data", default=None,
                   help="CIFAR-10 test images: class folders or a .tar/.tar.xz of them")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR-10 through torchvision into --cache-dir")
    p.add_argument("--cache-dir", default=None,
                   help="download folder (default: $VIMSTM_CACHE or ~/.cache/vimstm)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4],
                   help="STM token-reduction ratios (default 0.2 0.4)")
    p.add_argument("--method", default="stm", help="merging method to compare with dense")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="precision (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--limit", type=int, default=None,
                   help=f"evaluate N images spread over the split (default: all on CUDA, "
                        f"{CPU_LIMIT} on the CPU, where the reference scan is slow)")
    p.add_argument("--speed-runs", type=int, default=None,
                   help="timed batches per speed measurement (default 30 on CUDA, 3 on the CPU)")
    p.add_argument("--require-weights", action="store_true",
                   help="fail when the bundled weights are missing instead of falling back to "
                        "speed and FLOPs of the untrained architecture")
    p.set_defaults(func=run)


def spread_indices(total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(total)`` (every class of a sorted folder)."""
    n = max(0, min(n, total))
    return [i * total // n for i in range(n)]


def load_bundled(device: torch.device | str = "cpu") -> nn.Module:
    """The bundled CIFAR-10 model, or a clear error saying how to make it."""
    from vimstm.models.registry import create_model, get_spec, weights_dir

    path = weights_dir() / (get_spec(MODEL).weights or "")
    if not path.is_file():
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


def cache_dir(given: str | None = None) -> Path:
    if given:
        return Path(given)
    return Path(os.environ.get("VIMSTM_CACHE", Path.home() / ".cache" / "vimstm"))


def open_test_data(model: nn.Module, data: str | None, download: bool,
                   cache: str | None = None) -> Any:
    """The CIFAR-10 test set with the model's evaluation transform, or None."""
    from vimstm.data import eval_transform

    cfg = model.default_cfg  # type: ignore[attr-defined]
    tf = eval_transform(cfg["input_size"][-1], crop_pct=cfg["crop_pct"], mean=cfg["mean"],
                        std=cfg["std"])
    if data:
        from vimstm.data import open_dataset

        ds = open_dataset(data, transform=tf)
        from vimstm.engine.train import check_classes

        check_classes(ds.classes, CIFAR10_CLASSES, None, f"the bundled {MODEL}")
        return ds
    if download:
        from torchvision.datasets import CIFAR10

        root = cache_dir(cache) / "cifar10"
        try:
            return CIFAR10(str(root), train=False, download=True, transform=tf)
        except Exception as e:  # network or disk trouble: say what to do instead
            raise DataError(
                f"could not download CIFAR-10 into {root}: {e}. Pass --data with a local copy "
                "of the test images (class folders or a .tar.xz) instead"
            ) from None
    return None


def _speed(model: nn.Module, batch: int, dtype: str, device: torch.device, runs: int) -> float:
    """Median images/s on random input (:func:`vimstm.engine.benchmark.measure_throughput`),
    replaying a CUDA graph on CUDA as ``vimstm bench`` does."""
    from vimstm.engine.benchmark import measure_throughput

    r = measure_throughput(model, batch_size=batch, dtype=dtype, device=device,
                           warmup=max(1, runs // 3), runs=runs, cuda_graph=device.type == "cuda")
    return float(r["images_per_s"])


def _gflops(model: nn.Module) -> float:
    from vimstm.flops import count_flops

    return float(count_flops(model).gmacs_literature)


def demo_rows(dense: nn.Module, dataset: Any, method: str, ratios: list[float],
              device: torch.device, dtype: str, batch_size: int, workers: int,
              speed_runs: int) -> list[dict[str, Any]]:
    """One row per setting: method, ratio, top1 (or None), gflops, images_per_s, speedup."""
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
        model = dense if ratio == 0 else patch(copy.deepcopy(dense), method=method, ratio=ratio)
        model = model.to(device).eval()
        top1 = None
        if loader is not None:
            amp = None if dtype == "fp32" else dtype
            top1 = evaluate(model, loader, device=device, amp=amp, progress=True)["top1"]
        ips = _speed(model, batch_size, dtype, device, speed_runs)
        rows.append({"method": "dense" if ratio == 0 else method, "ratio": ratio, "top1": top1,
                     "gflops": _gflops(model), "images_per_s": ips,
                     "speedup": ips / rows[0]["images_per_s"] if rows else 1.0})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'method':<8} {'ratio':>6} {'top-1 %':>8} {'GFLOPs*':>8} {'images/s':>10} "
            f"{'speed-up':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        top1 = "n/a" if r["top1"] is None else f"{r['top1']:.2f}"
        gf = "n/a" if r["gflops"] is None else f"{r['gflops']:.3g}"
        lines.append(f"{r['method']:<8} {r['ratio']:>6.0%} {top1:>8} {gf:>8} "
                     f"{r['images_per_s']:>10.0f} {r['speedup']:>8.2f}x")
    lines.append("* GMACs of one scan direction, the Vision Mamba papers' FLOPs convention")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if any(not 0 < r < 1 for r in args.ratios):
        raise ConfigError("--ratios must lie strictly between 0 and 1, e.g. 0.2 0.4")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is visible")
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    cpu = device.type == "cpu"
    runs = args.speed_runs or (3 if cpu else 30)
    limit = args.limit if args.limit is not None else (CPU_LIMIT if cpu else None)
    batch = min(args.batch_size, CPU_SPEED_BATCH) if cpu else args.batch_size
    args.workers = max(0, min(args.workers, os.cpu_count() or 1))
    try:
        model = load_bundled(device)
    except VimstmError as e:
        if args.require_weights:
            raise
        print(f"NOTE: {e}.\nFalling back to the untrained {MODEL} architecture (random "
              "weights): the table reports speed and FLOPs only, no accuracy.")
        model = untrained_model(device)
        args.data, args.download = None, False
        if cpu and args.speed_runs is None:
            batch, runs = 2, 2
    dataset = open_test_data(model, args.data, args.download, args.cache_dir)
    if dataset is None:
        print("no test data given (--data DIR_OR_TAR or --download): reporting speed and FLOPs "
              "only")
    else:
        total = len(dataset)
        if limit and limit < total:  # evenly spread: archives are sorted by class
            dataset = torch.utils.data.Subset(dataset, spread_indices(total, limit))
        note = (" (evenly spread; a CPU runs the slow reference scan: --limit N for more)"
                if cpu and limit else "")
        print(f"evaluating on {len(dataset)} of {total} CIFAR-10 test images{note}")
    rows = demo_rows(model, dataset, args.method, list(args.ratios), device, dtype,
                     batch, args.workers, runs)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{MODEL} on {name}, {dtype}, batch {batch}")
    print(format_table(rows))
    return 0

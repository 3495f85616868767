"""Top-1/top-5 evaluation (single process or torchrun) and the ``vimstm eval`` command.

Under torchrun every rank evaluates every ``world_size``-th image (no padded duplicates) and
the counts are summed, so the result equals a single-process run.

The model is built from its registered name; for checkpoints of other shapes than the
registered ones (own training runs, small data sets) give the architecture with
``--depth/--embed-dim/--patch-size/--stride/--num-classes/--d-state`` (the error for a mismatched
checkpoint says which shapes the file holds).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
from torch import nn

from vimstm.errors import DataError
from vimstm.models.checkpoint import atomic_write
from vimstm.runtime import AMP_NAMES, autocast, sync


def evaluate(
    model: nn.Module,
    loader: Any,
    device: str | torch.device = "cpu",
    amp: str | None = None,
    progress: bool = True,
    desc: str = "eval",
    batch_seconds: list[float] | None = None,
) -> dict[str, float | int]:
    """Top-1 and top-5 accuracy (percent) of ``model`` over ``loader``.

    With torch.distributed initialized the counts are summed over ranks.

    Args:
        model: the model, already on ``device`` (dense or patched).
        loader: yields ``(images, labels)`` or ``(images, labels, number_skipped)`` (the
            loaders of :func:`vimstm.data.build_eval_loader`).
        device: where the images go.
        amp: autocast precision, ``fp16`` or ``bf16``; None for fp32.
        progress: show a progress bar (rank 0), labelled ``desc``, with the running top-1.
        desc: the progress bar's label.
        batch_seconds: if given, receives each batch's forward time (device-synchronised),
            for speed from the evaluation itself.

    Returns:
        ``top1``, ``top5``, ``images`` (evaluated), ``skipped`` (unreadable), ``seconds``
        (wall time of the loop, data loading included; the slowest rank under torchrun) and
        ``images_per_s`` (images / seconds).
    """
    from tqdm import tqdm

    from vimstm.engine.distributed import all_reduce_max, all_reduce_sum, is_main

    device = torch.device(device)
    amp_ctx = autocast(device, amp)  # validate before the loop
    model.eval().to(device)
    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    images = 0
    skipped = 0
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(loader, total=total, desc=desc, unit="batch", dynamic_ncols=True,
               disable=(None if progress and is_main() else True))
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for step, batch in enumerate(bar):
            x, y = batch[0], batch[1]
            skipped += int(batch[2]) if len(batch) > 2 else 0
            if x.numel() == 0:
                continue
            lo, hi = int(y.min()), int(y.max())  # labels come on the CPU: no device sync
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if batch_seconds is not None:
                sync(device)
                tb = time.perf_counter()
            with amp_ctx:
                logits = model(x)
            if batch_seconds is not None:
                sync(device)
                batch_seconds.append(time.perf_counter() - tb)
            n_out = logits.shape[-1]
            if hi >= n_out or lo < 0:
                raise DataError(f"label {hi if hi >= n_out else lo} is out of range for a model "
                                f"with {n_out} outputs; the data set's classes do not fit it")
            top = logits.float().topk(min(5, n_out), dim=-1).indices
            hit = top == y[:, None]
            correct1 += hit[:, 0].sum()
            correct5 += hit.any(dim=1).sum()
            images += y.shape[0]
            if (device.type == "cpu" or step % 10 == 0 or step + 1 == total) and images:
                bar.set_postfix(top1=f"{100.0 * correct1.item() / images:.2f}")
    sync(device)
    seconds = time.perf_counter() - t0
    bar.close()
    counts = torch.tensor([correct1.item(), correct5.item(), images, skipped], dtype=torch.float64)
    all_reduce_sum(counts)
    secs = all_reduce_max(torch.tensor([seconds], dtype=torch.float64))
    c1, c5, n, s = (int(v) for v in counts.tolist())
    seconds = float(secs.item())
    if n == 0:
        raise DataError(f"no image could be evaluated: all {s} images were unreadable"
                        if s else "the loader gave no images; check the data path")
    return {
        "top1": 100.0 * c1 / n,
        "top5": 100.0 * c5 / n,
        "images": n,
        "skipped": s,
        "seconds": seconds,
        "images_per_s": n / max(seconds, 1e-9),
    }


# ---------------------------------------------------------------- CLI



def register(subparsers: Any) -> None:
    """Add ``vimstm eval``."""
    p = subparsers.add_parser(
        "eval",
        help="top-1/top-5 accuracy and images/s on an image folder or archive",
        description="Evaluate a Vision Mamba checkpoint on an ImageNet-style folder "
        "(val/<wnid>/*.JPEG; partial class sets map to the ImageNet-1k indices), any folder of "
        "class folders, or a .tar/.tar.xz of one. Works under torchrun (each image counted once).",
    )
    from vimstm.engine.model_args import add_model_args

    add_model_args(p, weights="required")
    p.add_argument("--data", required=True, help="folder of class folders, ImageNet root/val "
                   "folder, or .tar/.tar.gz/.tar.xz archive")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available; the local rank's "
                   "GPU under torchrun)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="data-loading processes (0: load in this process)")
    p.add_argument("--amp", choices=sorted(AMP_NAMES), default=None,
                   help="autocast dtype (default: fp32)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="center-crop fraction: resize to int(img_size / crop_pct) first "
                   "(default: the model's, 0.875 for ImageNet models)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate only N images, spread evenly over the data set")
    p.add_argument("--synsets", default=None,
                   help="labels: 'imagenet' (wnid folders -> ImageNet-1k indices), 'folders' "
                   "(sorted folder names), or a file with one class per line; default: "
                   "imagenet when every folder is an ImageNet-1k wnid, else folders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from vimstm.merge import add_merge_args

    add_merge_args(p)
    p.set_defaults(func=run)


def _merge_settings(args: argparse.Namespace) -> dict[str, Any]:
    from vimstm.merge import SCHEDULE_FLAGS, merge_method

    method = merge_method(args)
    if method is None:
        return {}
    out = {"method": method}
    for key in SCHEDULE_FLAGS:
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    if getattr(args, "merge_opt", None):
        out["merge_opt"] = list(args.merge_opt)
    return out


def run(args: argparse.Namespace) -> int:
    """``vimstm eval``: build, optionally merge, evaluate, print (rank 0), write JSON."""
    from vimstm import __version__
    from vimstm.data import build_eval_loader
    from vimstm.engine.distributed import cleanup, init_distributed

    if args.json:
        from vimstm.engine.paths import check_output_file

        check_output_file(args.json, "--json")
    info = init_distributed(args.device)
    try:
        from vimstm.engine.model_args import model_from_args

        model = model_from_args(args, weights="required")
        merge = _merge_settings(args)
        if merge:
            from vimstm.merge import patch_from_args

            model = patch_from_args(model, args)
        cfg = model.default_cfg
        crop_pct = args.crop_pct if args.crop_pct is not None else cfg["crop_pct"]
        loader = build_eval_loader(
            args.data, model, batch_size=args.batch_size, workers=args.workers,
            distributed=info, crop_pct=crop_pct, synsets=args.synsets, limit=args.limit,
            pin_memory=info.device.type == "cuda",
        )
        dataset = loader.dataset
        base = getattr(dataset, "dataset", dataset)  # through a --limit Subset
        res = evaluate(model, loader, info.device, amp=args.amp, progress=not args.no_progress)
        if info.rank != 0:
            return 0
        device_name = (torch.cuda.get_device_name(info.device) if info.device.type == "cuda"
                       else "cpu")
        out: dict[str, Any] = {
            "model": model.vimstm_name, "checkpoint": args.checkpoint or "pretrained",
            "data": str(args.data), "data_folder": str(base.root),
            "labels": base.labels,
            "num_classes": base.num_classes, "img_size": cfg["input_size"][-1],
            "crop_pct": crop_pct, "batch_size": args.batch_size, "amp": args.amp or "fp32",
            "device": str(info.device), "device_name": device_name,
            "world_size": info.world_size, **merge, **res, "vimstm_version": __version__,
        }
        from vimstm.flops import describe, operating_point

        point = operating_point(model)
        out["operating_point"] = point
        label = ", ".join(f"{k} {v}" for k, v in merge.items())
        print(f"{out['model']} on {base.root} ({out['labels']} labels, {base.num_classes} "
              f"classes){'  merge: ' + label if label else ''}")
        print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
              f"images/s {res['images_per_s']:.1f}  ({res['images']} images, "
              f"{res['skipped']} skipped, {res['seconds']:.1f} s, {device_name}, "
              f"{out['amp']}, {info.world_size} process{'es' if info.world_size > 1 else ''})")
        print(describe(point))
        if args.json:
            atomic_write(args.json, json.dumps(out, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0
    finally:
        cleanup()

"""``vimstm calibrate``: a per-block merge schedule chosen on a few hundred training images.

The default schedules spread a GFLOPs or reduction target over fixed blocks. Calibration asks
the model where merging hurts least (the STM paper's "layer-wise loss convergence", made into a
tool):

1. **Sensitivity.** For every candidate step i (after block i; ``every`` picks them), merge
   ``probe`` of the patch tokens there alone and measure ``s_i``, the mean KL divergence of the
   merged logits from the dense ones over the calibration images.
2. **Allocation.** With a quadratic model of the damage, ``KL_i(r) ~ s_i (r / r_probe)^2``,
   and ``c_i``, the GMACs that one token removed after block i saves (it skips the blocks after
   i, proportional to the blocks after it), minimising ``sum_i KL_i(r_i)`` at a given saving
   gives ``r_i ∝ c_i / s_i``: tokens go where they save most for the least damage, and are
   spread (the model is convex) rather than piled on one block. At most ``max_steps`` steps
   merge (few steps are what make merging pay on a GPU, BENCHMARKS.md): every subset of that
   many candidate steps is solved (the smallest scale that meets the target, counted in closed
   form by :func:`vimstm.flops.count_flops`, each step clipped to what the method can remove)
   and the one with the least modelled damage ``sum_i s_i r_i^2`` wins.

The result is a schedule file (JSON, :func:`vimstm.merge.schedule.schedule_document`) that
``patch(model, method=..., schedule=FILE)``, ``--schedule FILE`` and thus eval, bench, sweep and
finetune accept.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vimstm.errors import ConfigError, DataError
from vimstm.models.checkpoint import atomic_write


@torch.inference_mode()
def _logits(model: nn.Module, batches: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.cat([model(x.to(device)).float().cpu() for x in batches])


def _kl(dense: torch.Tensor, merged: torch.Tensor) -> float:
    """Mean over images of KL(dense || merged)."""
    kl = F.kl_div(merged.double().log_softmax(-1), dense.double().log_softmax(-1),
                  log_target=True, reduction="batchmean")
    return max(float(kl), 0.0)  # >= 0 in exact arithmetic


def sensitivity(
    model: nn.Module,
    batches: list[torch.Tensor],
    method: str,
    options: dict[str, Any],
    steps: list[int],
    probe: float,
    device: torch.device,
    progress: bool = True,
) -> tuple[list[float], int]:
    """KL of the logits when ``probe`` of the patch tokens merge after block i alone, per step."""
    from vimstm.merge import patch, unpatch

    m = model.patch_embed.num_patches
    r_probe = max(1, round(probe * m))
    unpatch(model)
    dense = _logits(model, batches, device)
    out = []
    for k, i in enumerate(steps):
        t0 = time.perf_counter()
        sched = [0] * (len(model.layers) - 1)
        sched[i] = r_probe
        patch(model, method=method, r=sched, **options)
        try:
            out.append(_kl(dense, _logits(model, batches, device)))
        finally:
            unpatch(model)
        if progress:
            print(f"  step after block {i:2d}: KL {out[-1]:.5f}  ({k + 1}/{len(steps)}, "
                  f"{time.perf_counter() - t0:.1f} s)", flush=True)
    return out, r_probe


def allocate(
    model: nn.Module,
    method: str,
    options: dict[str, Any],
    steps: list[int],
    sens: list[float],
    flops: float | None = None,
    reduction: float | None = None,
    max_steps: int | None = 3,
) -> list[int]:
    """The schedule that meets the target with ``r_i ∝ c_i / s_i`` (module docstring)."""
    from vimstm.flops import count_flops
    from vimstm.merge import build_merger
    from vimstm.merge.schedule import check_reduction, mean_token_reduction

    if (flops is None) == (reduction is None):
        raise ConfigError("give one calibration target: flops=FRACTION (of the dense GFLOPs "
                          "to keep) or reduction=FRACTION (mean share of tokens removed)")
    if flops is not None and not 0.0 < flops < 1.0:
        raise ConfigError(f"flops={flops!r} must be the fraction of dense GFLOPs to keep, in "
                          "(0, 1)")
    if reduction is not None:
        check_reduction(reduction)
    depth = len(model.layers)
    m = model.patch_embed.num_patches
    floor = min(s for s in sens if s > 0) if any(s > 0 for s in sens) else 1.0
    s_eff = {i: max(s, floor * 1e-3) for i, s in zip(steps, sens)}
    weight = {i: (depth - 1 - i) / s_eff[i] for i in steps}  # r_i ∝ c_i / s_i
    merger = build_merger(model, method, r=[0] * (depth - 1), **options)
    t0, c0 = m + 1, m // 2
    goal = flops if flops is not None else -float(reduction)  # type: ignore[arg-type]

    def schedule(chosen: tuple[int, ...], lam: float) -> list[int]:
        sched = [0] * (depth - 1)
        tokens, cls = t0, c0
        for i in chosen:  # in block order
            r = min(round(lam * weight[i]), tokens - 2)
            while r > 0 and not merger.cap(tokens, cls, r):
                r -= 1
            sched[i] = r
            if r:
                cls = merger.next_cls(tokens, cls, r)
                tokens -= r
        return sched

    def value(sched: list[int]) -> float:
        if flops is not None:
            merger.schedule = sched
            rep = count_flops(model, merger=merger)
            return rep.gmacs_literature / rep.dense_gmacs_literature
        return -mean_token_reduction(sched, depth, m)

    def solve(chosen: tuple[int, ...]) -> list[int] | None:
        """The smallest scale on these steps that meets the target, or None if none does."""
        lo, hi = 0.0, m / min(weight[i] for i in chosen)  # hi: every step at its cap
        if value(schedule(chosen, hi)) > goal + 1e-9:
            return None
        for _ in range(40):
            mid = (lo + hi) / 2
            if value(schedule(chosen, mid)) <= goal + 1e-9:
                hi = mid
            else:
                lo = mid
        return schedule(chosen, hi)

    # with the quadratic model more steps never hurt, so use exactly max_steps of them: the
    # subset whose solution has the least modelled damage sum_i s_i r_i^2
    k = len(steps) if max_steps is None else min(max_steps, len(steps))
    best: tuple[float, list[int]] | None = None
    for chosen in itertools.combinations(sorted(steps), k):
        sched = solve(chosen)
        if sched is None:
            continue
        damage = sum(s_eff[i] * sched[i] ** 2 for i in chosen)
        if best is None or damage < best[0]:
            best = (damage, sched)
    if best is None:
        what = f"flops={flops}" if flops is not None else f"reduction={reduction}"
        raise ConfigError(
            f"{what} is not reachable with {k} merge steps of {method!r} among the steps after "
            f"blocks {sorted(steps)}; allow more steps (--max-steps) or relax the target"
        )
    return best[1]


def calibrate(
    model: nn.Module,
    loader: Any,
    method: str = "stm",
    flops: float | None = None,
    reduction: float | None = None,
    options: dict[str, Any] | None = None,
    every: int = 1,
    probe: float = 0.25,
    max_steps: int | None = 3,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Measure per-step sensitivity on ``loader``'s images and return the schedule document.

    Args:
        model: a dense model (moved to ``device``).
        loader: calibration images (labels only checked against the head), e.g. a few hundred
            training images.
        method: the merging method the schedule is for.
        flops: target share of the dense GFLOPs kept; or
        reduction: target mean share of patch tokens removed per block (one of the two).
        options: the method's options.
        every: candidate steps after every ``every``-th block.
        probe: share of the patch tokens merged at one step to measure its sensitivity.
        max_steps: at most this many merge steps in the schedule (None: no limit).
        device: where the model runs.
        progress: print each step's sensitivity.

    Returns:
        The schedule document (:func:`vimstm.merge.schedule.schedule_document`) that
        ``patch(..., schedule=FILE)`` reads once written as JSON.
    """
    from vimstm.flops import count_flops
    from vimstm.merge import METHODS, build_merger
    from vimstm.merge.schedule import merge_slots, schedule_document

    if method not in METHODS:
        raise ConfigError(f"unknown merging method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 < probe < 0.5:
        raise ConfigError(f"probe={probe!r} must lie in (0, 0.5): the share of patch tokens "
                          "merged at one step to measure its sensitivity")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"every={every!r} must be an int >= 1 (candidate steps)")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps={max_steps!r} must be >= 1 (or None for no limit)")
    options = dict(options or {})
    device = torch.device(device)
    model = model.to(device).eval()
    depth = len(model.layers)
    m = model.patch_embed.num_patches
    build_merger(model, method, r=[0] * (depth - 1), **options)  # options checked up front
    batches, images = [], 0
    for batch in loader:
        x, y = batch[0], batch[1]
        if x.numel() == 0:
            continue
        n_out = int(getattr(model, "num_classes", 0) or 0)
        if n_out and int(y.max()) >= n_out:
            raise DataError(f"label {int(y.max())} of the calibration set is out of range for a "
                            f"model with {n_out} outputs; its classes do not fit the model")
        batches.append(x)
        images += x.shape[0]
    if not images:
        raise DataError("the calibration set gave no images; check --data")
    steps = merge_slots(depth, every)
    if progress:
        print(f"calibrating {method} on {images} images: {len(steps)} candidate steps, "
              f"probe {probe:.0%} of {m} patch tokens", flush=True)
    sens, r_probe = sensitivity(model, batches, method, options, steps, probe, device, progress)
    sched = allocate(model, method, options, steps, sens, flops, reduction, max_steps)
    merger = build_merger(model, method, r=sched, **options)
    rep = count_flops(model, merger=merger)
    target = {"flops": flops} if flops is not None else {"reduction": reduction}
    return schedule_document(
        sched, depth, m,
        model=getattr(model, "vimstm_name", type(model).__name__), method=method,
        options={k: v for k, v in merger.options.items()}, target=target,
        tokens_last_block=rep.tokens_last_block, gmacs_literature=rep.gmacs_literature,
        gmacs_full=rep.gmacs_full, dense_gmacs_literature=rep.dense_gmacs_literature,
        dense_gmacs_full=rep.dense_gmacs_full,
        calibration={"images": images, "probe": probe, "probe_tokens": r_probe,
                     "steps": steps, "kl": sens, "max_steps": max_steps},
    )


# ---------------------------------------------------------------- CLI


def register(subparsers: Any) -> None:
    """Add ``vimstm calibrate``."""
    p = subparsers.add_parser(
        "calibrate", help="choose the per-block merge schedule from a few hundred images",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from vimstm.engine.model_args import add_model_args

    add_model_args(p, weights="required")
    p.add_argument("--data", required=True,
                   help="calibration images: a training split (folder of class folders or "
                   ".tar/.tar.xz); see `vimstm eval`")
    p.add_argument("--images", type=int, default=256,
                   help="images used, spread evenly over the data set (default 256)")
    p.add_argument("--method", default="stm", help="merging method (default stm)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--flops", type=float, help="fraction of the dense GFLOPs to keep")
    target.add_argument("--reduction", type=float,
                        help="mean share of patch tokens removed per block (papers' ratio)")
    p.add_argument("--merge-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (e.g. protect=2)")
    p.add_argument("--every", type=int, default=1,
                   help="candidate steps: after every k-th block (default 1: all)")
    p.add_argument("--max-steps", type=int, default=3,
                   help="at most this many merge steps (default 3, as the default schedule; "
                   "0: no limit)")
    p.add_argument("--probe", type=float, default=0.25,
                   help="share of patch tokens merged at one step to measure it (default 0.25)")
    p.add_argument("--out", "-o", required=True, help="schedule file to write (.json)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--synsets", default=None, help="labels, as `vimstm eval --synsets`")
    p.set_defaults(func=run)


def _check_out(path: str) -> Path:
    from vimstm.engine.paths import check_output_file

    if Path(path).suffix != ".json":
        raise ConfigError(f"--out {path}: a schedule file must end in .json")
    return check_output_file(path, "--out")


def run(args: argparse.Namespace) -> int:
    from vimstm import __version__
    from vimstm.data import build_eval_loader
    from vimstm.engine.model_args import model_from_args
    from vimstm.merge import parse_merge_opts

    out = _check_out(args.out)
    if args.images < 1:
        raise ConfigError("--images must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model_from_args(args, weights="required")
    loader = build_eval_loader(args.data, model, batch_size=args.batch_size,
                               workers=args.workers, synsets=args.synsets, limit=args.images,
                               pin_memory=device.type == "cuda")
    doc = calibrate(model, loader, args.method, args.flops, args.reduction,
                    parse_merge_opts(args.merge_opt), args.every, args.probe,
                    args.max_steps or None, device)
    doc.update(checkpoint=args.checkpoint or "pretrained", data=str(args.data),
               vimstm_version=__version__)
    atomic_write(out, json.dumps(doc, indent=2) + "\n")
    steps = {i: r for i, r in enumerate(doc["schedule"]) if r}
    print("schedule: " + ", ".join(f"{r} after block {i}" for i, r in steps.items()))
    from vimstm.flops import describe

    print(describe(doc))
    print(f"wrote {out}  (use: --method {args.method} --schedule {out})")
    return 0

"""``vimstm train``, ``vimstm finetune`` and ``vimstm export``.

* ``train``: a Vision Mamba from scratch with the DeiT recipe through timm (AdamW, cosine schedule
  with warm-up, label smoothing, mixup/cutmix, RandAugment, random erasing, drop path, EMA), AMP in
  bf16, gradient clipping, DDP under torchrun. For inputs of 64 px or less the crop is
  ``RandomCrop(padding=size/8)`` + flip + RandAugment instead of RandomResizedCrop.
  ``--teacher FILE`` adds distillation from a convolutional teacher trained by ``vimstm
  teacher`` (DeiT: hard labels of the teacher by default,
  ``loss = (1-α)·base + α·CE(student, argmax teacher)``).
* ``finetune``: a token-merging model (``--method``/``--ratio``, see :mod:`vimstm.merge`) trained
  with distillation from its own dense, frozen copy:
  ``loss = (1-α)·base(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.
  The defaults are R-MeeTo's recipe (NUS-HPC-AI-Lab/R-MeeTo, Vim-Ti: lr 2e-5 for a total batch of
  512, min lr 1e-6, 30 epochs, no warm-up, AdamW wd 0.05, mixup 0.8 / cutmix 1.0, smoothing 0.1,
  RandAugment m9, random erasing 0.25, drop path 0.1, no EMA, loss ``1.0·CE + 0.5·KL`` at T=1).
  Adam is invariant to the scale of the loss, so ``1.0·CE + 0.5·KL`` is ``α = 1/3`` here.
  ``--method dense`` (asked for by name; no method at all is refused) runs the same recipe
  without merging: the control that tells a merged fine-tune's gain from more training.
* ``export``: the (EMA) weights of a run as a half-precision safetensors file, e.g. the bundled
  ``vimstm/weights/vim_tiny_cifar10.safetensors`` (:func:`vimstm.models.checkpoint.export_weights`).

``--holdout N`` keeps N class-balanced training images out of training
(:func:`vimstm.data.holdout_split`: fixed by the data and N alone) and evaluates them as a
validation set (``holdout_top1``), so a recipe or epoch can be chosen without the test split.

Every epoch writes ``OUTPUT/last.pth`` atomically and ``best.pth`` when the validation top-1
(the held-out one when ``--holdout`` is given) improves (:mod:`vimstm.engine.train_state`);
``--resume auto`` continues from ``last.pth`` at the next epoch. Each epoch re-seeds every RNG
from (seed, epoch, rank), so a resumed run repeats an uninterrupted one. The training
transforms are :func:`vimstm.data.train_transform`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from tqdm import tqdm

from vimstm.data import (
    SMALL_IMAGE,
    ShardSampler,
    check_classes,
    collate_skip,
    eval_transform,
    holdout_split,
    open_dataset,
    spread_subset,
    train_transform,
)
from vimstm.engine import distributed
from vimstm.engine.evaluate import evaluate
from vimstm.engine.model_args import add_model_args, arch_overrides, weights_source
from vimstm.engine.paths import check_output_dir
from vimstm.engine.train_state import (
    LAST,
    START_EVAL,
    TrainState,
    plain,
    resume_path,
    seed_all,
    write_log,
)
from vimstm.errors import ConfigError, DataError, VimstmError
from vimstm.merge import add_merge_args, merge_method, patch_from_args
from vimstm.models.checkpoint import (
    atomic_write,
    export_weights,
    extract_state_dict,
    load_checkpoint,
    read_checkpoint,
    safetensors_metadata,
)
from vimstm.models.registry import create_model, get_spec, pretrained_weights
from vimstm.runtime import COMPILE_MODES, autocast, compiled, mark_step

SYNC_EVERY = 25  # steps between host syncs (loss check, progress bar)

TRAIN_DEFAULTS: dict[str, Any] = dict(
    epochs=300, batch_size=128, lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=5,
    weight_decay=0.05, smoothing=0.1, mixup=0.8, cutmix=1.0, aa="rand-m9-mstd0.5-inc1",
    reprob=0.25, drop_path=0.1, model_ema=False, model_ema_decay=0.99996, clip_grad=None,
)
# R-MeeTo (image_task/main.py and exp_sh/tab2/vim_tiny.sh): lr 2e-5 at a total batch of 512.
FINETUNE_DEFAULTS: dict[str, Any] = dict(
    TRAIN_DEFAULTS, epochs=30, lr=2e-5, min_lr=1e-6, warmup_epochs=0, drop_path=0.1,
    distill_alpha=1 / 3, distill_temp=1.0,
)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    """Add ``train``, ``finetune`` and ``export`` to the ``vimstm`` command line."""
    p = subparsers.add_parser(
        "train", help="train a Vision Mamba from scratch (DeiT recipe, timm)",
        description="Train from scratch on a class-folder or .tar data set; resumable "
                    "(--resume auto), DDP under torchrun.",
    )
    _add_common_args(p, TRAIN_DEFAULTS)
    g = p.add_argument_group("progressive resizing (off by default)")
    g.add_argument("--min-res", type=int, default=None,
                   help="train the first epochs at this image size (downsampled on the device, "
                        "position embedding resampled), growing to the model's size")
    g.add_argument("--res-ramp", type=float, nargs=2, default=(0.2, 0.5),
                   metavar=("START", "END"),
                   help="fractions of --epochs: --min-res before START, the model's size from "
                        "END on, linear in between (default 0.2 0.5)")
    g = p.add_argument_group("distillation from a convolutional teacher (off by default)")
    g.add_argument("--teacher", nargs="+", default=None, metavar="FILE",
                   help="teacher file(s) written by `vimstm teacher`; each sees every training "
                        "batch (re-normalised to its own mean and std); several files are an "
                        "ensemble (the mean of their logits)")
    g.add_argument("--distill-alpha", type=float, default=None,
                   help="weight α of the distillation term (default 0.5, DeiT's)")
    g.add_argument("--distill-temp", type=float, default=None,
                   help="temperature T of soft distillation (default 1)")
    g.add_argument("--distill-type", choices=("hard", "soft"), default=None,
                   help="hard: cross-entropy to the teacher's top class (default, DeiT's better "
                        "kind); soft: T²·KL to its softmax")
    p.set_defaults(func=run_train, finetune=False)

    f = subparsers.add_parser(
        "finetune", help="fine-tune a token-merging model with distillation from the dense one",
        description="Patch a trained model with a merging method and fine-tune it with "
                    "distillation from its frozen dense copy (R-MeeTo's recipe by default).",
    )
    _add_common_args(f, FINETUNE_DEFAULTS)
    f.add_argument("--distill-alpha", type=float, default=FINETUNE_DEFAULTS["distill_alpha"],
                   help="weight α of the distillation term (1/3: R-MeeTo's 1.0 CE + 0.5 KL; "
                        "0: no teacher, plain training from the weights)")
    f.add_argument("--distill-temp", type=float, default=FINETUNE_DEFAULTS["distill_temp"],
                   help="distillation temperature T (default 1)")
    add_merge_args(f)
    f.set_defaults(func=run_finetune, finetune=True)

    e = subparsers.add_parser(
        "export", help="export a run's weights to a half-precision safetensors file",
        description="Write the EMA (or raw) weights of a training checkpoint as safetensors.",
    )
    e.add_argument("checkpoint", help="a training checkpoint (OUTPUT/last.pth) or its folder")
    e.add_argument("--output", "-o", default=None,
                   help="file to write (default: CHECKPOINT's folder/model.safetensors)")
    e.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="EMA weights (auto: EMA when the checkpoint has them)")
    e.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    e.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled Python objects in the checkpoint (only for trusted files)")
    e.set_defaults(func=run_export)



def _add_common_args(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    add_model_args(p, weights="required" if d is FINETUNE_DEFAULTS else "initial")
    g = p.add_argument_group("regularisation of the model")
    g.add_argument("--drop-path", type=float, default=d["drop_path"], help="drop-path rate")

    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="training data: class folders or .tar/.tar.xz")
    g.add_argument("--val-data", default=None, help="validation data, evaluated every epoch")
    g.add_argument("--holdout", type=int, default=None, metavar="N",
                   help="hold out N images of --data (class-balanced, the same N for the same "
                        "data and N) as a validation set: train on the rest, evaluate these "
                        "(logged as holdout_top1; with --val-data both are evaluated and "
                        "best.pth follows the held-out top-1)")
    g.add_argument("--workers", type=int, default=8, help="data-loading processes per GPU")
    g.add_argument("--limit-train", type=int, default=None, help="use only N training images")
    g.add_argument("--limit-val", type=int, default=None, help="use only N validation images")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d["epochs"])
    g.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="images per GPU per step (the total batch is this × GPUs)")
    g.add_argument("--lr", type=float, default=d["lr"],
                   help="peak learning rate for the total batch (no automatic scaling)")
    g.add_argument("--min-lr", type=float, default=d["min_lr"])
    g.add_argument("--warmup-lr", type=float, default=d["warmup_lr"])
    g.add_argument("--warmup-epochs", type=float, default=d["warmup_epochs"])
    g.add_argument("--sched-on", choices=("step", "epoch"), default="step",
                   help="update the cosine schedule every step or every epoch")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--clip-grad", type=float, default=d["clip_grad"],
                   help="clip the gradient norm to this value (default: no clipping)")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="autocast precision (auto: bf16 on CUDA, none on the CPU)")
    g.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=COMPILE_MODES, metavar="MODE",
                   help="train through torch.compile (the first steps compile; BENCHMARKS.md); "
                        "MODE: default, reduce-overhead (also CUDA-graph replays), "
                        "max-autotune, max-autotune-no-cudagraphs")

    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--smoothing", type=float, default=d["smoothing"], help="label smoothing")
    g.add_argument("--mixup", type=float, default=d["mixup"], help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=d["cutmix"], help="cutmix alpha (0: off)")
    g.add_argument("--mixup-prob", type=float, default=1.0,
                   help="probability of applying mixup or cutmix to a batch")
    g.add_argument("--mixup-off-epoch", type=int, default=None, metavar="N",
                   help="no mixup/cutmix from epoch N on (1-based: the first N-1 epochs mix; "
                        "label smoothing stays)")
    g.add_argument("--aa", default=d["aa"],
                   help="timm RandAugment policy, e.g. rand-m9-mstd0.5-inc1 ('none': off)")
    g.add_argument("--reprob", type=float, default=d["reprob"], help="random-erasing probability")
    g.add_argument("--model-ema", action=argparse.BooleanOptionalAction,
                   default=d["model_ema"], help="keep an EMA of the weights (timm ModelEmaV3)")
    g.add_argument("--model-ema-decay", type=float, default=d["model_ema_decay"],
                   help="EMA decay cap; warmed up as 1-(1+step)^(-2/3) below it")

    g = p.add_argument_group("run")
    g.add_argument("--output", required=True, help="folder for last.pth, best.pth, log.jsonl")
    g.add_argument("--resume", default=None,
                   help="checkpoint to continue from, or 'auto' for OUTPUT/last.pth if present")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-minutes", type=float, default=None,
                   help="stop cleanly after the last epoch that fits in this many minutes of "
                        "this process (continue later with --resume auto)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--eval-every", type=int, default=1, metavar="K",
                   help="evaluate --val-data / --holdout every K epochs and after the last "
                        "one (default 1)")
    g.add_argument("--eval-start", action="store_true",
                   help="also evaluate the starting weights (merged, for finetune) before the "
                        "first epoch; written to OUTPUT/start_eval.json")


def run_train(args: argparse.Namespace) -> int:
    fit(args)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    fit(args)
    return 0


def run_export(args: argparse.Namespace) -> int:
    src = Path(args.checkpoint)
    if src.is_dir():
        src = src / LAST
    out = Path(args.output) if args.output else src.with_name("model.safetensors")
    from vimstm.engine.paths import check_output_file

    check_output_file(out, "--output")
    ema = {"auto": None, "ema": True, "raw": False}[args.weights]
    path = export_weights(src, out, use_ema=ema, dtype=args.dtype, trust=args.trust_checkpoint)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------
def preflight_disk(out: Path, checkpoint_bytes: int, copies: int = 3) -> None:
    """Fail before training when ``out``'s disk cannot hold ``copies`` checkpoints."""
    free = shutil.disk_usage(out).free
    need = copies * checkpoint_bytes
    if free < need:
        raise VimstmError(
            f"not enough free disk space in {out}: {free / 2**20:.0f} MiB free, but a run needs "
            f"about {need / 2**20:.0f} MiB ({copies} checkpoints of {checkpoint_bytes / 2**20:.0f} "
            "MiB: last.pth, best.pth and the copy being written). Free some space or choose "
            "another --output"
        )


def distill_loss(student: Tensor, teacher: Tensor, temp: float) -> Tensor:
    """``T²·KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over the batch."""
    s = F.log_softmax(student.float() / temp, dim=-1)
    t = F.log_softmax(teacher.float() / temp, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temp * temp


def _sd_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@dataclass
class _Meter:
    loss: float = 0.0
    correct: float = 0.0
    images: int = 0
    steps: int = 0
    seconds: float = 0.0
    distill: dict[str, float] = field(default_factory=dict)  # train_ce, train_kd (finetune)


# ---------------------------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------------------------
def fit(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or fine-tune) as ``args`` say; returns the last epoch's log entry.

    Args:
        args: the parsed ``vimstm train`` / ``vimstm finetune`` arguments (``args.finetune``
            tells which).
    """
    _validate(args)
    started = time.perf_counter()
    dist = distributed.init_distributed()
    main = distributed.is_main()
    out = Path(args.output)
    try:
        on_main_for_all(lambda: check_output_dir(out, "--output"), main, dist.device)
        return _fit(args, dist, out, main, started)
    finally:
        distributed.cleanup()


def on_main_for_all(check: Any, main: bool, device: torch.device) -> None:
    """Run ``check`` on rank 0; if it raises, every rank raises (no rank is left waiting)."""
    error: VimstmError | None = None
    if main:
        try:
            check()
        except VimstmError as e:
            error = e
    flag = torch.tensor(float(error is not None), device=device)
    failed = distributed.all_reduce_sum(flag).item()
    if error is not None:
        raise error
    if failed:
        raise VimstmError("rank 0 stopped the run before training (its message says why)")


def _validate(args: argparse.Namespace) -> None:
    checks = [
        (args.epochs >= 1, "--epochs must be at least 1"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (args.lr > 0, "--lr must be positive"),
        (0 <= args.smoothing < 1, "--smoothing must be in [0, 1)"),
        (0 <= args.reprob <= 1, "--reprob must be in [0, 1]"),
        (0 <= args.drop_path < 1, "--drop-path must be in [0, 1)"),
        (0 < args.model_ema_decay < 1, "--model-ema-decay must be in (0, 1)"),
        (args.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
    ]
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        checks.append((False, "mixup/cutmix need an even --batch-size"))
    checks.append((args.eval_every >= 1, "--eval-every must be at least 1"))
    off = args.mixup_off_epoch
    if off is not None:
        checks += [(args.mixup > 0 or args.cutmix > 0,
                    "--mixup-off-epoch without --mixup or --cutmix would be ignored"),
                   (2 <= off <= args.epochs,
                    f"--mixup-off-epoch must be in [2, --epochs {args.epochs}] (epoch N is the "
                    f"first without mixing), got {off}")]
    min_res = getattr(args, "min_res", None)
    if min_res is not None:
        lo, hi = args.res_ramp
        checks += [(min_res >= 1, "--min-res must be at least 1"),
                   (0 <= lo <= hi <= 1, "--res-ramp START END must satisfy 0 <= START <= END "
                                        f"<= 1 (fractions of --epochs), got {lo:g} {hi:g}")]
    for flag in ("limit_train", "limit_val", "holdout"):
        n = getattr(args, flag)
        if n is not None and n < 1:
            checks.append((False, f"--{flag.replace('_', '-')} must be at least 1 (leave it out "
                                  f"to use every image), got {n}"))
    if not getattr(args, "finetune", False) and hasattr(args, "teacher"):
        given = [f for f in ("distill_alpha", "distill_temp", "distill_type")
                 if getattr(args, f) is not None]
        if args.teacher is None and given:
            raise ConfigError(f"--{given[0].replace('_', '-')} without --teacher would be "
                              "ignored; add --teacher FILE (from `vimstm teacher`)")
        if args.teacher is not None:
            for f in args.teacher:
                if not Path(f).is_file():
                    raise ConfigError(f"--teacher {f}: no such file (train one with "
                                      "`vimstm teacher`)")
            args.distill_alpha = 0.5 if args.distill_alpha is None else args.distill_alpha
            args.distill_temp = 1.0 if args.distill_temp is None else args.distill_temp
            args.distill_type = args.distill_type or "hard"
            if args.distill_type == "hard" and "distill_temp" in given:
                raise ConfigError("--distill-temp is for --distill-type soft; hard "
                                  "distillation uses the teacher's top class only")
    if args.eval_start and not (args.val_data or args.holdout):
        checks.append((False, "--eval-start without --val-data or --holdout would be ignored: "
                              "give the images to evaluate"))
    if args.limit_val is not None and not args.val_data:
        checks.append((False, "--limit-val without --val-data would be ignored (--holdout N "
                              "sets the number of held-out images itself)"))
    if getattr(args, "finetune", False) or getattr(args, "teacher", None) is not None:
        checks += [(0 <= args.distill_alpha <= 1, "--distill-alpha must be in [0, 1]"),
                   (args.distill_temp > 0, "--distill-temp must be positive")]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    arch_overrides(args)  # sizes >= 1
    if getattr(args, "finetune", False):
        explicit = args.method is not None  # --method dense: the control, asked for by name
        if merge_method(args) is None and not explicit:
            raise ConfigError("finetune trains a merged model against its dense self: give a "
                              "merging method and schedule, e.g. --method stm --ratio 0.4 (without "
                              "one it would only self-distil the dense model; --method dense does "
                              "that on purpose, as the control of a merged fine-tune)")
        weights_source(args, "required")  # weights exist before any data is read
    elif args.checkpoint is not None or args.pretrained:  # train from given weights
        weights_source(args, "initial")
        if args.checkpoint is not None and not Path(args.checkpoint).is_file():
            raise ConfigError(f"--checkpoint {args.checkpoint}: no such file")
    elif args.use_ema:
        raise ConfigError("--use-ema without --checkpoint would be ignored: it picks the EMA "
                          "weights of the training checkpoint to start from")


def epoch_img_size(epoch: int, epochs: int, full: int, min_res: int | None,
                   ramp: tuple[float, float], step: int) -> int:
    """The training image size of ``epoch`` under progressive resizing (``full`` when off).

    ``min_res`` before ``ramp[0] * epochs``, ``full`` from ``ramp[1] * epochs`` on, linear in
    between, rounded down to ``min_res`` plus a multiple of ``step`` (so every size tiles the
    patch grid when ``min_res`` does).
    """
    if not min_res or min_res >= full:
        return full
    start, end = ramp[0] * epochs, ramp[1] * epochs
    if epoch < start:
        return min_res
    if epoch >= end:
        return full
    size = min_res + (full - min_res) * (epoch - start) / max(end - start, 1e-9)
    return min(full, min_res + int((size - min_res) // step) * step)


def _resolve_amp(amp: str, device: torch.device) -> str | None:
    """``--amp`` as an autocast precision name: auto is bf16 on CUDA, none on the CPU."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" else None
    return None if amp == "none" else amp


def _open_data(args: argparse.Namespace, model_cfg: dict[str, Any], img_size: int) -> tuple:
    """``(train, val, holdout, classes)``: the training set (less the held-out images, then
    ``--limit-train`` of the rest), ``--val-data`` and the ``--holdout`` images (eval transform),
    each ``None`` when not asked for."""
    mean, std = model_cfg["mean"], model_cfg["std"]
    train_tf = train_transform(img_size, mean, std, args.aa, args.reprob)
    crop = 1.0 if img_size <= SMALL_IMAGE else model_cfg.get("crop_pct", 0.875)
    eval_tf = eval_transform(img_size, crop_pct=crop, mean=mean, std=std)
    full = open_dataset(args.data, transform=train_tf)
    if len(full) == 0:
        raise DataError(f"no training images in {args.data}")
    classes = list(full.classes)
    train: Any = full
    pool: list[int] | None = None  # the images left to train on (None: all)
    holdout = None
    if args.holdout:
        pool, held = holdout_split(full.targets, args.holdout, classes)
        shown = copy.copy(full)  # same files, evaluation transform
        shown.transform = eval_tf
        holdout = torch.utils.data.Subset(shown, held)
        train = torch.utils.data.Subset(full, pool)
    if args.limit_train:
        g = torch.Generator().manual_seed(args.seed)
        n = len(pool) if pool is not None else len(full)
        idx = torch.randperm(n, generator=g)[: args.limit_train].tolist()
        train = torch.utils.data.Subset(full, [pool[i] for i in idx] if pool is not None else idx)
    val = None
    if args.val_data:
        val = open_dataset(args.val_data, transform=eval_tf)
        check_classes(val.classes, f"the training data ({args.data})", expected=classes,
                      data=f"the validation data ({args.val_data})")
        if args.limit_val:
            val = spread_subset(val, args.limit_val)
    return train, val, holdout, classes


def _build_model(args: argparse.Namespace, num_classes: int | None) -> nn.Module:
    """The untrained architecture (weights are loaded by the caller: finetune, resume)."""
    extra = {"dynamic_img_size": True} if getattr(args, "min_res", None) else {}
    return create_model(args.model, scan_backend=args.scan_backend,
                        **{**arch_overrides(args), "num_classes": num_classes,
                           "drop_path_rate": args.drop_path, **extra})


def _class_contract(args: argparse.Namespace, data_classes: list[str]) -> tuple[int, list | None]:
    """The number of outputs to build and class names that the data must match (or None)."""
    spec = get_spec(args.model)
    pinned = args.num_classes if args.num_classes is not None else spec.kwargs.get("num_classes")
    if not args.finetune:
        if pinned is not None:
            check_classes(data_classes, f"model {args.model}", outputs=pinned, training=True,
                          data=f"the training data ({args.data})")
        return len(data_classes), None
    if weights_source(args, "required")["pretrained"]:
        args.checkpoint = str(pretrained_weights(spec))
    obj = read_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
    names = obj.get("classes") if isinstance(obj, dict) else None
    sd = extract_state_dict(obj)
    head = sd.get("head.weight")
    count = int(head.shape[0]) if head is not None else None
    if names is None and str(args.checkpoint).endswith(".safetensors"):
        names = _safetensors_classes(args.checkpoint)
    check_classes(data_classes, f"checkpoint {args.checkpoint}", expected=names, outputs=count,
                  data=f"the training data ({args.data})")
    return count or len(data_classes), names


def _safetensors_classes(path: str | Path) -> list[str] | None:
    meta = safetensors_metadata(path)
    return json.loads(meta["classes"]) if "classes" in meta else None


@dataclass
class TrainContext:
    """Everything one epoch of training reads: the run's objects and its settings."""

    state: TrainState  # model, optimizer, scheduler, scaler, EMA
    train_model: nn.Module  # the model, or its DDP wrapper
    teacher: nn.Module | None  # frozen: the dense model (finetune) or a convnet (train)
    loader: Any
    criterion: nn.Module
    mixup: Any  # timm Mixup, or None
    device: torch.device
    amp: str | None  # autocast precision (fp16, bf16) or None
    args: argparse.Namespace
    main: bool  # rank 0: progress bar
    img_size: int  # the model's input size
    train_size: int = 0  # this epoch's training size (progressive resizing), set per epoch


def _fit(args: argparse.Namespace, dist: distributed.DistInfo, out: Path, main: bool,
         started: float) -> dict[str, Any]:
    device = torch.device(dist.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = _resolve_amp(args.amp, device)

    # -- resume: read the checkpoint first, it decides the classes -----------------------------
    resume = resume_path(args.resume, out)
    ckpt = read_checkpoint(resume, trust=args.trust_checkpoint) if resume else None

    # -- model and data --------------------------------------------------------------------
    spec = get_spec(args.model)
    img_size = args.img_size or spec.kwargs.get("img_size", 224)
    model_cfg = {"mean": spec.mean, "std": spec.std, "crop_pct": spec.crop_pct}
    train_set, val_set, holdout_set, classes = _open_data(args, model_cfg, img_size)
    num_classes, _ = _class_contract(args, classes)
    if ckpt is not None:
        check_classes(classes, f"checkpoint {resume}", expected=ckpt.get("classes"),
                      data=f"the training data ({args.data})")

    seed_all(args.seed)
    model = _build_model(args, num_classes)
    teacher = None
    if args.finetune:
        load_checkpoint(model, args.checkpoint, use_ema=args.use_ema, trust=args.trust_checkpoint)
        if args.distill_alpha > 0:  # α = 0: plain training from the weights, no teacher
            teacher = copy.deepcopy(model).eval().requires_grad_(False).to(device)
        model = patch_from_args(model, args)
    elif args.checkpoint is not None or args.pretrained:  # train from given weights
        if ckpt is not None:
            if main:
                print(f"resuming {resume}: the run's own weights continue; --checkpoint / "
                      "--pretrained were read only when it started", flush=True)
        else:
            path = args.checkpoint or str(pretrained_weights(spec))  # checked in _validate
            load_checkpoint(model, path, use_ema=args.use_ema, trust=args.trust_checkpoint)
            if main:
                print(f"starting from the weights of {path}", flush=True)
    if getattr(args, "teacher", None) is not None:
        teacher = _load_teacher(args, classes, model_cfg, device)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    ckpt_bytes = _sd_bytes(model) * (3 + int(args.model_ema)) + 2**20
    on_main_for_all(lambda: preflight_disk(out, ckpt_bytes), main, device)

    ema = None
    if args.model_ema:
        ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=True)

    # -- loaders ---------------------------------------------------------------------------
    world, rank = dist.world_size, dist.rank
    sampler = torch.utils.data.DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    loader_kw: dict[str, Any] = dict(num_workers=args.workers, pin_memory=device.type == "cuda",
                                     collate_fn=collate_skip)
    if args.workers > 0:
        loader_kw.update(persistent_workers=True, prefetch_factor=4)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True, **loader_kw)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"--batch-size {args.batch_size} × {world} GPU(s) is larger than the training data "
            f"({len(train_set)} images): lower the batch size")
    val_loader = holdout_loader = None
    if val_set is not None:
        val_loader = torch.utils.data.DataLoader(
            val_set, batch_size=max(args.batch_size, 64),
            sampler=ShardSampler(len(val_set), rank, world), **loader_kw)
    if holdout_set is not None:
        holdout_loader = torch.utils.data.DataLoader(
            holdout_set, batch_size=max(args.batch_size, 64),
            sampler=ShardSampler(len(holdout_set), rank, world), **loader_kw)
    # the set best.pth follows: the held-out images when given (never the test split by choice)
    select = "holdout" if holdout_loader is not None else "val" if val_loader is not None else None

    # -- optimisation ----------------------------------------------------------------------
    no_wd = set(getattr(model, "no_weight_decay", lambda: set())())
    no_wd |= {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    groups = param_groups_weight_decay(model, args.weight_decay, no_weight_decay_list=no_wd)
    # fused AdamW on CUDA (one kernel for every parameter), as the training benchmark times it
    optimizer = create_optimizer_v2(groups, "adamw", lr=args.lr, weight_decay=args.weight_decay,
                                    **({"fused": True} if device.type == "cuda" else {}))
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        min_lr=args.min_lr, warmup_lr=args.warmup_lr, step_on_epochs=args.sched_on == "epoch",
        updates_per_epoch=steps_per_epoch,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    state = TrainState(model, optimizer, scheduler, scaler, ema)

    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                      label_smoothing=args.smoothing, num_classes=num_classes)
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    # -- state from the checkpoint ---------------------------------------------------------
    start_epoch, step, history, best = 0, 0, [], -1.0
    if ckpt is not None:
        start_epoch, step, history, best = state.restore(ckpt, resume, args)
        if main:
            print(f"resumed from {resume} after epoch {start_epoch}/{args.epochs} (step {step}): "
                  f"continuing with epoch {start_epoch + 1}")

    train_model: nn.Module = model
    if dist.enabled and world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = compiled(train_model, args.compile, fullgraph=False)
    ctx = TrainContext(state, train_model, teacher, train_loader, criterion, mixup, device,
                       amp, args, main, img_size)
    min_res = getattr(args, "min_res", None)
    if min_res is not None:
        on_main_for_all(lambda: _check_min_res(model, min_res, img_size), main, device)

    if main:
        what = "fine-tuning" if args.finetune else "training"
        print(f"{what} {args.model} ({n_params / 1e6:.2f} M parameters) on {len(train_set)} "
              f"images, {len(classes)} classes, {world} process(es) on {device}, "
              f"total batch {args.batch_size * world}, {steps_per_epoch} steps/epoch, "
              f"amp {amp or 'none'}, output {out}")
        if holdout_set is not None:
            print(f"held out {len(holdout_set)} images of {args.data} (class-balanced, "
                  "--holdout): evaluated as holdout_top1, not trained on; best.pth follows them",
                  flush=True)
        write_log(out, history)

    if args.eval_start and start_epoch == 0:
        t0 = time.perf_counter()
        start = {"weights": "start", "epoch": None,
                 **_evaluate_sets(model, None, val_loader, holdout_loader, device, amp)}
        start["eval_seconds"] = time.perf_counter() - t0
        if main:
            atomic_write(out / START_EVAL, json.dumps(start, indent=1) + "\n")
            print("before training: " + _format_scores(start), flush=True)

    last: dict[str, Any] = history[-1] if history else {}
    if start_epoch >= args.epochs and main:
        print(f"the run in {out} has finished all {args.epochs} epochs: nothing to do")
    longest = 0.0  # the longest epoch of this process, checkpointing included
    for epoch in range(start_epoch, args.epochs):
        if args.max_minutes and epoch > start_epoch:
            late = time.perf_counter() - started + 1.1 * longest > 60 * args.max_minutes
            if distributed.all_reduce_sum(torch.tensor(float(late), device=device)).item() > 0:
                if main:
                    print(f"stopping after epoch {epoch} of {args.epochs} to stay within "
                          f"--max-minutes {args.max_minutes:g}; continue with --resume auto")
                break
        epoch_start = time.perf_counter()
        seed_all(args.seed + 1000 * epoch + rank)
        sampler.set_epoch(epoch)
        if args.sched_on == "epoch":
            scheduler.step(epoch)
        ctx.train_size = epoch_img_size(epoch, args.epochs, img_size, min_res,
                                        tuple(getattr(args, "res_ramp", (0, 0))),
                                        2 * model.patch_embed.stride)
        if mixup is not None:
            mixup.mixup_enabled = args.mixup_off_epoch is None or epoch + 1 < args.mixup_off_epoch
        meter = _train_one_epoch(ctx, epoch, step)
        step += meter.steps
        stats = {k: distributed.all_reduce_sum(
                    torch.tensor(v, dtype=torch.float64, device=device)).item()
                 for k, v in (("loss", meter.loss), ("correct", meter.correct),
                              ("images", meter.images))}
        entry: dict[str, Any] = {
            "epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": stats["loss"] / max(meter.steps * world, 1),
            "train_top1": 100 * stats["correct"] / max(stats["images"], 1),
            "images_per_s": stats["images"] / max(meter.seconds, 1e-9),
            "epoch_seconds": meter.seconds,
        }
        if ctx.train_size != img_size:
            entry["train_img_size"] = ctx.train_size
        entry.update(meter.distill)
        if mixup is not None:
            entry["mixing"] = bool(mixup.mixup_enabled)
        if getattr(model, "merger", None) is not None:
            entry["tokens_per_block"] = plain(model.merge_info.get("tokens_per_block"))
        evaluate_now = (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs
        if select is not None and evaluate_now:
            t0 = time.perf_counter()
            entry.update(_evaluate_sets(model, ema, val_loader, holdout_loader, device, amp))
            entry["eval_seconds"] = time.perf_counter() - t0
        keys = ("holdout_top1", "holdout_ema_top1") if select == "holdout" else ("val_top1",
                                                                               "ema_top1")
        score = max(entry.get(keys[0], -1.0), entry.get(keys[1], -1.0))
        is_best = select is not None and score > best
        best = max(best, score)
        entry["best_top1"] = best if select is not None and best >= 0 else None
        if select is not None:
            entry["best_on"] = select
        history.append(entry)
        last = entry
        if main:
            state.save(out, state.checkpoint(epoch, step, args, classes, history, best), is_best)
            write_log(out, history)
            print(_format_entry(entry, args.epochs), flush=True)
        distributed.barrier()
        longest = max(longest, time.perf_counter() - epoch_start)
    return last


def _train_one_epoch(ctx: TrainContext, epoch: int, step: int) -> _Meter:
    """One pass over ``ctx.loader`` from global ``step``; sums stay on the device and sync
    every ``SYNC_EVERY`` steps."""
    args, device, st = ctx.args, ctx.device, ctx.state
    ctx.train_model.train()
    meter = _Meter()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct, ce, kd
    params = [p for p in st.model.parameters() if p.requires_grad]
    bar = tqdm(ctx.loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
               dynamic_ncols=True, disable=not ctx.main or args.no_progress, mininterval=1.0,
               file=sys.stderr)
    t0 = time.perf_counter()
    for x, y, _skipped in bar:  # unreadable images are reported and left out (collate_skip)
        mark_step(args.compile)
        if ctx.mixup is not None and x.shape[0] % 2:
            x, y = x[:-1], y[:-1]
        if x.shape[0] == 0:
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if ctx.train_size != ctx.img_size:
            x = F.interpolate(x, size=(ctx.train_size, ctx.train_size), mode="bilinear",
                              antialias=True, align_corners=False)
        x, target = ctx.mixup(x, y) if ctx.mixup is not None else (x, y)
        with autocast(device, ctx.amp):
            logits = ctx.train_model(x)
            loss = ctx.criterion(logits, target)
            if ctx.teacher is not None:
                with torch.no_grad():
                    t_logits = ctx.teacher(x)
                if getattr(args, "distill_type", "soft") == "hard":
                    kd = F.cross_entropy(logits.float(), t_logits.argmax(-1))
                else:
                    kd = distill_loss(logits, t_logits, args.distill_temp)
                sums[2] += loss.detach()
                sums[3] += kd.detach()
                loss = (1 - args.distill_alpha) * loss + args.distill_alpha * kd
        st.optimizer.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        if args.clip_grad:
            st.scaler.unscale_(st.optimizer)
            torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
        st.scaler.step(st.optimizer)
        st.scaler.update()
        meter.steps += 1
        if args.sched_on == "step":
            st.scheduler.step_update(step + meter.steps)
        if st.ema is not None:
            st.ema.update(st.model, step=step + meter.steps)
        sums[0] += loss.detach()
        sums[1] += (logits.detach().argmax(-1) == y).sum()
        meter.images += x.shape[0]
        if meter.steps % SYNC_EVERY == 0 or meter.steps == 1:
            value = loss.item()
            _check_finite(value, epoch, step + meter.steps)
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{st.optimizer.param_groups[0]['lr']:.2e}")
    loss_sum, correct, ce_sum, kd_sum = sums.tolist()  # waits for the GPU
    meter.seconds = time.perf_counter() - t0
    _check_finite(loss_sum, epoch, step + meter.steps)
    meter.loss, meter.correct = loss_sum, correct
    if ctx.teacher is not None:
        meter.distill = {"train_ce": ce_sum / max(meter.steps, 1),
                         "train_kd": kd_sum / max(meter.steps, 1)}
    return meter


def _load_teacher(args: argparse.Namespace, classes: list[str], model_cfg: dict[str, Any],
                  device: torch.device) -> nn.Module:
    """The frozen teacher(s) of ``--teacher`` on ``device``, as one module fed the student's
    normalised batch (:class:`vimstm.models.cnn.Teachers`)."""
    from vimstm.models.cnn import load_teachers

    teacher, t_classes = load_teachers(args.teacher, model_cfg["mean"], model_cfg["std"])
    check_classes(classes, f"teacher {args.teacher[0]}", expected=t_classes,
                  data=f"the training data ({args.data})")
    return teacher.to(device)


def _check_min_res(model: nn.Module, min_res: int, img_size: int) -> None:
    """--min-res must be below the model's size and tile its patch grid."""
    from vimstm.models.vim import patch_grid

    if min_res >= img_size:
        raise ConfigError(f"--min-res {min_res} must be smaller than the image size {img_size}")
    pe = model.patch_embed
    patch_grid(min_res, pe.patch_size, pe.stride)


def _check_finite(value: float, epoch: int, step: int) -> None:
    if not math.isfinite(value):
        raise VimstmError(
            f"the loss became {value} by epoch {epoch + 1}, step {step}: lower --lr, add "
            "--clip-grad 1.0, or use --amp bf16 instead of fp16 (last.pth holds the last good "
            "epoch; continue with --resume auto)")


def _evaluate(model: nn.Module, loader: Any, device: torch.device, amp: str | None) -> float:
    """Top-1 (percent) over all ranks' shards (:func:`vimstm.engine.evaluate.evaluate`)."""
    return float(evaluate(model, loader, device=device, amp=amp, progress=False)["top1"])


def _evaluate_sets(model: nn.Module, ema: Any, val: Any, holdout: Any, device: torch.device,
                   amp: str | None) -> dict[str, float]:
    """Top-1 of the weights (and their EMA) on ``--val-data`` (``val_top1``, ``ema_top1``)
    and on the held-out training images (``holdout_top1``, ``holdout_ema_top1``)."""
    scores: dict[str, float] = {}
    for loader, prefix in ((holdout, "holdout_"), (val, "")):
        if loader is None:
            continue
        scores[f"{prefix}top1" if prefix else "val_top1"] = _evaluate(model, loader, device, amp)
        if ema is not None:
            scores[f"{prefix}ema_top1"] = _evaluate(ema.module, loader, device, amp)
    return scores


def _format_scores(e: dict[str, Any]) -> str:
    names = (("holdout_top1", "holdout top-1"), ("holdout_ema_top1", "holdout EMA top-1"),
             ("val_top1", "val top-1"), ("ema_top1", "EMA top-1"))
    return " | ".join(f"{label} {e[k]:.2f}" for k, label in names if k in e)


def _format_entry(e: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {e['epoch'] + 1}/{epochs}", f"loss {e['train_loss']:.4f}",
             f"lr {e['lr']:.2e}", f"train top-1 {e['train_top1']:.2f}"]
    if any(k in e for k in ("holdout_top1", "val_top1")):
        parts.append(_format_scores(e))
    if "train_img_size" in e:
        parts.append(f"{e['train_img_size']} px")
    parts += [f"{e['images_per_s']:.0f} img/s", f"{e['epoch_seconds']:.1f} s"]
    return " | ".join(parts)

"""``vimstm train``, ``vimstm finetune`` and ``vimstm export``.

* ``train``: a Vision Mamba from scratch with the DeiT recipe through timm (AdamW, cosine schedule
  with warm-up, label smoothing, mixup/cutmix, RandAugment, random erasing, drop path, EMA), AMP in
  bf16, gradient clipping, DDP under torchrun. For inputs of 64 px or less the crop is
  ``RandomCrop(padding=size/8)`` + flip + RandAugment instead of RandomResizedCrop.
* ``finetune``: a token-merging model (``--method``/``--ratio``, see :mod:`vimstm.merge`) trained
  with distillation from its own dense, frozen copy:
  ``loss = (1-α)·base(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.
  The defaults are R-MeeTo's recipe (NUS-HPC-AI-Lab/R-MeeTo, Vim-Ti: lr 2e-5 for a total batch of
  512, min lr 1e-6, 30 epochs, no warm-up, AdamW wd 0.05, mixup 0.8 / cutmix 1.0, smoothing 0.1,
  RandAugment m9, random erasing 0.25, drop path 0.1, no EMA, loss ``1.0·CE + 0.5·KL`` at T=1).
  Adam is invariant to the scale of the loss, so ``1.0·CE + 0.5·KL`` is ``α = 1/3`` here.
* ``export``: the (EMA) weights of a run as a half-precision safetensors file, e.g. the bundled
  ``vimstm/weights/vim_tiny_cifar10.safetensors``.

Every epoch writes ``OUTPUT/last.pth`` atomically (model, EMA, optimizer, scheduler, scaler, epoch,
step, args as a plain dict, class names, the log history, RNG states) and ``best.pth`` when the
validation top-1 improves; ``--resume auto`` continues from ``last.pth`` at the next epoch. Each
epoch re-seeds every RNG from (seed, epoch, rank), so a resumed run repeats an uninterrupted one.
The log is ``OUTPUT/log.jsonl``, rewritten from the checkpoint's history on resume.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vimstm.errors import CheckpointError, ConfigError, DataError, VimstmError

LAST, BEST, LOG = "last.pth", "best.pth", "log.jsonl"
SMALL_IMAGE = 64  # inputs up to this size use RandomCrop + flip instead of RandomResizedCrop
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
# Kept in float32 on export: the SSM's decay and step-size parameters (tiny, precision-sensitive).
FP32_SUFFIXES = ("A_log", "A_b_log", ".D", ".D_b", "dt_proj.bias", "dt_proj_b.bias")


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
    p.set_defaults(func=run_train, finetune=False)

    f = subparsers.add_parser(
        "finetune", help="fine-tune a token-merging model with distillation from the dense one",
        description="Patch a trained model with a merging method and fine-tune it with "
                    "distillation from its frozen dense copy (R-MeeTo's recipe by default).",
    )
    _add_common_args(f, FINETUNE_DEFAULTS)
    f.add_argument("--checkpoint", default=None,
                   help="the dense model to start from and distil from (default: bundled weights)")
    f.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled Python objects in --checkpoint (only for trusted files)")
    f.add_argument("--distill-alpha", type=float, default=FINETUNE_DEFAULTS["distill_alpha"],
                   help="weight α of the distillation term (1/3: R-MeeTo's 1.0 CE + 0.5 KL)")
    f.add_argument("--distill-temp", type=float, default=FINETUNE_DEFAULTS["distill_temp"],
                   help="distillation temperature T (default 1)")
    from vimstm.merge import add_merge_args

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
    e.set_defaults(func=run_export)



def _add_common_args(p: argparse.ArgumentParser, d: dict[str, Any]) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="registered model name (vimstm models)")
    for name in ("depth", "embed-dim", "img-size", "patch-size", "stride", "num-classes",
                 "d-state"):
        g.add_argument(f"--{name}", type=int, default=None, help="override the registered value")
    g.add_argument("--drop-path", type=float, default=d["drop_path"], help="drop-path rate")
    g.add_argument("--scan-backend", default="auto",
                   help="selective-scan implementation (auto, reference, triton, mamba_ssm)")

    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="training data: class folders or .tar/.tar.xz")
    g.add_argument("--val-data", default=None, help="validation data, evaluated every epoch")
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

    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--smoothing", type=float, default=d["smoothing"], help="label smoothing")
    g.add_argument("--mixup", type=float, default=d["mixup"], help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=d["cutmix"], help="cutmix alpha (0: off)")
    g.add_argument("--mixup-prob", type=float, default=1.0,
                   help="probability of applying mixup or cutmix to a batch")
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
    ema = {"auto": None, "ema": True, "raw": False}[args.weights]
    path = export_weights(src, out, use_ema=ema, dtype=args.dtype)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------
def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """The RNG states as tensors and plain containers (loadable with weights_only=True)."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(state: dict[str, Any]) -> None:
    import numpy as np

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # another number of GPUs
            torch.cuda.set_rng_state_all(state["cuda"])


def build_train_transform(img_size: int, mean: Sequence[float], std: Sequence[float],
                          aa: str | None = "rand-m9-mstd0.5-inc1", reprob: float = 0.25,
                          interpolation: str = "bicubic") -> Any:
    """The training augmentation: timm's for large inputs, crop+flip+RandAugment for small ones."""
    from timm.data import create_transform

    aa = None if aa in (None, "", "none") else aa
    if img_size > SMALL_IMAGE:
        return create_transform(
            img_size, is_training=True, auto_augment=aa, interpolation=interpolation,
            re_prob=reprob, re_mode="pixel", re_count=1, mean=tuple(mean), std=tuple(std),
        )
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms as T

    ops: list[Any] = [
        T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC),  # no-op at the right size
        T.RandomCrop(img_size, padding=img_size // 8, padding_mode="reflect"),
        T.RandomHorizontalFlip(),
    ]
    if aa:
        if not aa.startswith("rand"):
            raise ConfigError(f"--aa {aa!r}: only RandAugment policies ('rand-...') are supported")
        hparams = dict(translate_const=int(img_size * 0.45),
                       img_mean=tuple(round(255 * m) for m in mean))
        try:
            ra = rand_augment_transform(aa, hparams)
        except (AssertionError, ValueError, KeyError) as e:
            raise ConfigError(f"--aa {aa!r} is not a valid timm RandAugment string: {e}") from None
        for op in getattr(ra, "ops", ()):
            if "Posterize" in getattr(op, "name", ""):
                op.aug_fn = _posterize  # timm can ask for 0 bits, which Pillow >= 11 refuses
        ops.append(ra)
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    if reprob > 0:
        ops.append(RandomErasing(reprob, mode="pixel", max_count=1, device="cpu"))
    return T.Compose(ops)


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    from PIL import ImageOps

    return img if bits_to_keep >= 8 else ImageOps.posterize(img, max(1, int(bits_to_keep)))


def check_classes(data_classes: Sequence[str], expected: Sequence[str] | None,
                  expected_count: int | None, where: str) -> None:
    """A clear :class:`DataError` when a data set's classes differ from the model's."""
    if expected is not None and list(expected) != list(data_classes):
        extra = sorted(set(data_classes) - set(expected))
        missing = sorted(set(expected) - set(data_classes))
        detail = (f"the data has {len(extra)} class(es) the model lacks (e.g. {extra[:3]}) and "
                  f"lacks {len(missing)} (e.g. {missing[:3]})" if extra or missing
                  else "the same names in another order")
        raise DataError(
            f"the classes of the data ({len(data_classes)}) differ from those of {where} "
            f"({len(expected)}): {detail}. Use data with the same class folders, or train a new "
            "model on this data"
        )
    if expected_count is not None and expected_count != len(data_classes):
        raise DataError(
            f"the data has {len(data_classes)} classes but {where} has {expected_count} outputs. "
            f"Use data with {expected_count} class folders, or pass --num-classes "
            f"{len(data_classes)} to train a new model"
        )


def preflight_output(out: Path) -> None:
    """Fail before training when ``out`` cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise VimstmError(
            f"cannot write to the output folder {out}: {e.strerror or e}. Choose another "
            "--output or fix its permissions"
        ) from None


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


def _plain(v: Any) -> Any:
    """``v`` as JSON-like plain data (for the args saved in checkpoints)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: _plain(v) for k, v in vars(args).items() if not callable(v)}


def _sd_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@dataclass
class _Meter:
    loss: float = 0.0
    correct: float = 0.0
    images: int = 0
    steps: int = 0
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------------------------
def fit(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or fine-tune) as ``args`` say; returns the last epoch's log entry."""
    from vimstm.engine import distributed as D

    _validate(args)
    started = time.perf_counter()
    dist = D.init_distributed()
    main = D.is_main()
    out = Path(args.output)
    try:
        on_main_for_all(lambda: preflight_output(out), main, dist.device)
        return _fit(args, dist, out, main, started)
    finally:
        D.cleanup()


def on_main_for_all(check: Any, main: bool, device: torch.device) -> None:
    """Run ``check`` on rank 0; if it raises, every rank raises (no rank is left waiting)."""
    from vimstm.engine import distributed as D

    error: VimstmError | None = None
    if main:
        try:
            check()
        except VimstmError as e:
            error = e
    failed = D.all_reduce_sum(torch.tensor(float(error is not None), device=device)).item()
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
    if getattr(args, "finetune", False):
        checks += [(0 <= args.distill_alpha <= 1, "--distill-alpha must be in [0, 1]"),
                   (args.distill_temp > 0, "--distill-temp must be positive")]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def _resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def _open_data(args: argparse.Namespace, model_cfg: dict[str, Any], img_size: int) -> tuple:
    from vimstm.data import eval_transform, open_dataset

    mean, std = model_cfg["mean"], model_cfg["std"]
    train_tf = build_train_transform(img_size, mean, std, args.aa, args.reprob)
    train = open_dataset(args.data, transform=train_tf)
    if len(train) == 0:
        raise DataError(f"no training images in {args.data}")
    classes = list(train.classes)
    if args.limit_train:
        g = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(len(train), generator=g)[: args.limit_train].tolist()
        train = torch.utils.data.Subset(train, idx)
    val = None
    if args.val_data:
        crop = 1.0 if img_size <= SMALL_IMAGE else model_cfg.get("crop_pct", 0.875)
        val = open_dataset(args.val_data, transform=eval_transform(
            img_size, crop_pct=crop, mean=mean, std=std))
        check_classes(val.classes, classes, None, f"the training data ({args.data})")
        if args.limit_val:
            n = min(args.limit_val, len(val))  # evenly spread: class-sorted data keeps all classes
            val = torch.utils.data.Subset(val, [i * len(val) // n for i in range(n)])
    return train, val, classes


def _build_model(args: argparse.Namespace, num_classes: int | None) -> nn.Module:
    from vimstm.models.registry import create_model

    overrides = dict(depth=args.depth, embed_dim=args.embed_dim, img_size=args.img_size,
                     patch_size=args.patch_size, stride=args.stride, d_state=args.d_state,
                     num_classes=num_classes, drop_path_rate=args.drop_path)
    return create_model(args.model, scan_backend=args.scan_backend, **overrides)


def _class_contract(args: argparse.Namespace, data_classes: list[str]) -> tuple[int, list | None]:
    """The number of outputs to build and class names that the data must match (or None)."""
    from vimstm.models.checkpoint import extract_state_dict, read_checkpoint
    from vimstm.models.registry import get_spec, weights_dir

    spec = get_spec(args.model)
    pinned = args.num_classes if args.num_classes is not None else spec.kwargs.get("num_classes")
    if not args.finetune:
        if pinned is not None:
            check_classes(data_classes, None, pinned, f"model {args.model}")
        return len(data_classes), None
    if args.checkpoint is None:
        if spec.weights is None or not (weights_dir() / spec.weights).exists():
            raise ConfigError(f"model {args.model} has no bundled weights: pass --checkpoint "
                              "DENSE.pth (the trained dense model)")
        args.checkpoint = str(weights_dir() / spec.weights)
    obj = read_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
    names = obj.get("classes") if isinstance(obj, dict) else None
    sd = extract_state_dict(obj)
    head = sd.get("head.weight")
    count = int(head.shape[0]) if head is not None else None
    if names is None and str(args.checkpoint).endswith(".safetensors"):
        names = _safetensors_classes(args.checkpoint)
    check_classes(data_classes, names, count, f"checkpoint {args.checkpoint}")
    return count or len(data_classes), names


def _safetensors_classes(path: str | Path) -> list[str] | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["classes"]) if "classes" in meta else None


def _fit(args: argparse.Namespace, dist: Any, out: Path, main: bool,
         started: float) -> dict[str, Any]:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2, param_groups_weight_decay
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    from vimstm.engine import distributed as D
    from vimstm.models.checkpoint import atomic_save, load_checkpoint, read_checkpoint

    device = torch.device(dist.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = _resolve_amp(args.amp, device)

    # -- resume: read the checkpoint first, it decides the classes -----------------------------
    resume_path = _resume_path(args, out)
    ckpt = read_checkpoint(resume_path) if resume_path else None

    # -- model and data --------------------------------------------------------------------
    from vimstm.models.registry import get_spec

    spec = get_spec(args.model)
    img_size = args.img_size or spec.kwargs.get("img_size", 224)
    model_cfg = {"mean": spec.mean, "std": spec.std, "crop_pct": spec.crop_pct}
    train_set, val_set, classes = _open_data(args, model_cfg, img_size)
    num_classes, _ = _class_contract(args, classes)
    if ckpt is not None:
        check_classes(classes, ckpt.get("classes"), None, f"checkpoint {resume_path}")

    seed_all(args.seed)
    model = _build_model(args, num_classes)
    teacher = None
    if args.finetune:
        load_checkpoint(model, args.checkpoint, trust=args.trust_checkpoint)
        teacher = copy.deepcopy(model).eval().requires_grad_(False).to(device)
        from vimstm.merge import patch_from_args

        model = patch_from_args(model, args)
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
    from vimstm.data import ShardSampler, collate_skip

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
    val_loader = None
    if val_set is not None:
        val_loader = torch.utils.data.DataLoader(
            val_set, batch_size=max(args.batch_size, 64),
            sampler=ShardSampler(len(val_set), rank, world), **loader_kw)

    # -- optimisation ----------------------------------------------------------------------
    no_wd = set(getattr(model, "no_weight_decay", lambda: set())())
    no_wd |= {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    groups = param_groups_weight_decay(model, args.weight_decay, no_weight_decay_list=no_wd)
    optimizer = create_optimizer_v2(groups, "adamw", lr=args.lr, weight_decay=args.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        min_lr=args.min_lr, warmup_lr=args.warmup_lr, step_on_epochs=args.sched_on == "epoch",
        updates_per_epoch=steps_per_epoch,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

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
        start_epoch, step, history, best = _restore(
            ckpt, resume_path, model, ema, optimizer, scheduler, scaler, args)
        if main:
            print(f"resumed from {resume_path} at epoch {start_epoch} (step {step})")

    train_model: nn.Module = model
    if dist.enabled and world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    if main:
        what = "fine-tuning" if args.finetune else "training"
        print(f"{what} {args.model} ({n_params / 1e6:.2f} M parameters) on {len(train_set)} "
              f"images, {len(classes)} classes, {world} process(es) on {device}, "
              f"total batch {args.batch_size * world}, {steps_per_epoch} steps/epoch, "
              f"amp {amp_dtype}, output {out}")
        _write_log(out, history)

    last: dict[str, Any] = history[-1] if history else {}
    if start_epoch >= args.epochs and main:
        print(f"the run in {out} has finished all {args.epochs} epochs: nothing to do")
    longest = 0.0  # the longest epoch of this process, checkpointing included
    for epoch in range(start_epoch, args.epochs):
        if args.max_minutes and epoch > start_epoch:
            late = time.perf_counter() - started + 1.1 * longest > 60 * args.max_minutes
            if D.all_reduce_sum(torch.tensor(float(late), device=device)).item() > 0:
                if main:
                    print(f"stopping after epoch {epoch} of {args.epochs} to stay within "
                          f"--max-minutes {args.max_minutes:g}; continue with --resume auto")
                break
        epoch_start = time.perf_counter()
        seed_all(args.seed + 1000 * epoch + rank)
        sampler.set_epoch(epoch)
        if args.sched_on == "epoch":
            scheduler.step(epoch)
        meter = _train_one_epoch(
            train_model, model, teacher, train_loader, optimizer, scheduler, scaler, criterion,
            mixup, ema, device, amp_dtype, args, epoch, step, main)
        step += meter.steps
        stats = {k: D.all_reduce_sum(torch.tensor(v, dtype=torch.float64, device=device)).item()
                 for k, v in (("loss", meter.loss), ("correct", meter.correct),
                              ("images", meter.images))}
        entry: dict[str, Any] = {
            "epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": stats["loss"] / max(meter.steps * world, 1),
            "train_top1": 100 * stats["correct"] / max(stats["images"], 1),
            "images_per_s": stats["images"] / max(meter.seconds, 1e-9),
            "epoch_seconds": meter.seconds,
        }
        entry.update(meter.extra)
        if getattr(model, "merger", None) is not None:
            entry["tokens_per_block"] = _plain(model.merge_info.get("tokens_per_block"))
        if val_loader is not None:
            t0 = time.perf_counter()
            entry["val_top1"] = _evaluate(model, val_loader, device, amp_dtype)
            if ema is not None:
                entry["ema_top1"] = _evaluate(ema.module, val_loader, device, amp_dtype)
            entry["eval_seconds"] = time.perf_counter() - t0
        score = max(entry.get("val_top1", -1.0), entry.get("ema_top1", -1.0))
        is_best = val_loader is not None and score > best
        best = max(best, score)
        entry["best_top1"] = best if val_loader is not None else None
        history.append(entry)
        last = entry
        if main:
            state = _checkpoint(model, ema, optimizer, scheduler, scaler, epoch, step, args,
                                classes, history, best)
            atomic_save(state, out / LAST)
            if is_best:
                atomic_save(state, out / BEST)
            _write_log(out, history)
            print(_format_entry(entry, args.epochs), flush=True)
        D.barrier()
        longest = max(longest, time.perf_counter() - epoch_start)
    return last


def _resume_path(args: argparse.Namespace, out: Path) -> Path | None:
    if not args.resume:
        return None
    if args.resume == "auto":
        p = out / LAST
        return p if p.exists() else None
    p = Path(args.resume)
    if not p.exists():
        raise CheckpointError(f"--resume {p}: no such file (use --resume auto to continue the "
                              f"run in {out} if there is one)")
    return p


def _restore(ckpt: dict[str, Any], path: Path, model: nn.Module, ema: Any, optimizer: Any,
             scheduler: Any, scaler: Any, args: argparse.Namespace) -> tuple[int, int, list, float]:
    from vimstm.models.checkpoint import load_state_dict_checked

    for key in ("model", "optimizer", "epoch", "step"):
        if key not in ckpt:
            raise CheckpointError(f"{path} is not a vimstm training checkpoint (no {key!r}); "
                                  "to start from weights use `vimstm finetune --checkpoint`")
    load_state_dict_checked(model, ckpt["model"], source=str(path))
    if ema is not None:
        load_state_dict_checked(ema.module, ckpt.get("model_ema") or ckpt["model"],
                                source=f"{path} (EMA)")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"the optimizer state in {path} does not fit this run ({e}); "
                              "resume with the same options, or start a new --output") from None
    saved = ckpt.get("args", {})
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    step = int(ckpt["step"])
    if ckpt.get("scheduler") and saved.get("epochs") == args.epochs:
        scheduler.load_state_dict(ckpt["scheduler"])
    if args.sched_on == "step":
        scheduler.step_update(step)
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("rng"):
        set_rng_states(ckpt["rng"])
    best = ckpt.get("best_top1")
    return int(ckpt["epoch"]) + 1, step, list(ckpt.get("history", [])), -1.0 if best is None \
        else float(best)


def _checkpoint(model: nn.Module, ema: Any, optimizer: Any, scheduler: Any, scaler: Any,
                epoch: int, step: int, args: argparse.Namespace, classes: list[str],
                history: list[dict[str, Any]], best: float) -> dict[str, Any]:
    from vimstm import __version__

    return {
        "model": model.state_dict(),
        "model_ema": ema.module.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": {k: _plain(v) for k, v in scheduler.state_dict().items()},
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "epoch": epoch,
        "step": step,
        "args": plain_args(args),
        "classes": list(classes),
        "history": history,
        "best_top1": best,
        "rng": rng_states(),
        "vimstm_version": __version__,
    }


def _train_one_epoch(train_model: nn.Module, model: nn.Module, teacher: nn.Module | None,
                     loader: Any, optimizer: Any, scheduler: Any, scaler: Any, criterion: nn.Module,
                     mixup: Any, ema: Any, device: torch.device, amp_dtype: torch.dtype | None,
                     args: argparse.Namespace, epoch: int, step: int, main: bool) -> _Meter:
    """One pass over ``loader``; sums stay on the device and sync every ``SYNC_EVERY`` steps."""
    from tqdm import tqdm

    train_model.train()
    meter = _Meter()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct, ce, kd
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, dynamic_ncols=True,
               disable=not main or args.no_progress, mininterval=1.0, file=sys.stderr)
    t0 = time.perf_counter()
    for x, y, _skipped in bar:  # unreadable images are reported and left out (collate_skip)
        if mixup is not None and x.shape[0] % 2:
            x, y = x[:-1], y[:-1]
        if x.shape[0] == 0:
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        x, target = mixup(x, y) if mixup is not None else (x, y)
        with _autocast(device, amp_dtype):
            logits = train_model(x)
            loss = criterion(logits, target)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                kd = distill_loss(logits, t_logits, args.distill_temp)
                sums[2] += loss.detach()
                sums[3] += kd.detach()
                loss = (1 - args.distill_alpha) * loss + args.distill_alpha * kd
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        meter.steps += 1
        if args.sched_on == "step":
            scheduler.step_update(step + meter.steps)
        if ema is not None:
            ema.update(model, step=step + meter.steps)
        sums[0] += loss.detach()
        sums[1] += (logits.detach().argmax(-1) == y).sum()
        meter.images += x.shape[0]
        if meter.steps % SYNC_EVERY == 0 or meter.steps == 1:
            value = loss.item()
            _check_finite(value, epoch, step + meter.steps)
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    loss_sum, correct, ce_sum, kd_sum = sums.tolist()  # waits for the GPU
    meter.seconds = time.perf_counter() - t0
    _check_finite(loss_sum, epoch, step + meter.steps)
    meter.loss, meter.correct = loss_sum, correct
    if teacher is not None:
        meter.extra = {"train_ce": ce_sum / max(meter.steps, 1),
                       "train_kd": kd_sum / max(meter.steps, 1)}
    return meter


def _check_finite(value: float, epoch: int, step: int) -> None:
    if not math.isfinite(value):
        raise VimstmError(
            f"the loss became {value} by epoch {epoch + 1}, step {step}: lower --lr, add "
            "--clip-grad 1.0, or use --amp bf16 instead of fp16 (last.pth holds the last good "
            "epoch; continue with --resume auto)")


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _evaluate(model: nn.Module, loader: Any, device: torch.device,
              amp_dtype: torch.dtype | None) -> float:
    """Top-1 (percent) over all ranks' shards (:func:`vimstm.engine.evaluate.evaluate`)."""
    from vimstm.engine.evaluate import evaluate

    amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype)  # type: ignore[arg-type]
    return float(evaluate(model, loader, device=device, amp=amp, progress=False)["top1"])


def _write_log(out: Path, history: list[dict[str, Any]]) -> None:
    tmp = out / (LOG + ".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in history))
    os.replace(tmp, out / LOG)


def _format_entry(e: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {e['epoch'] + 1}/{epochs}", f"loss {e['train_loss']:.4f}",
             f"lr {e['lr']:.2e}", f"train top-1 {e['train_top1']:.2f}"]
    if "val_top1" in e:
        parts.append(f"val top-1 {e['val_top1']:.2f}")
    if "ema_top1" in e:
        parts.append(f"EMA top-1 {e['ema_top1']:.2f}")
    parts += [f"{e['images_per_s']:.0f} img/s", f"{e['epoch_seconds']:.1f} s"]
    return " | ".join(parts)


def iter_history(output: str | Path) -> Iterator[dict[str, Any]]:
    """The entries of a run's ``log.jsonl``."""
    with open(Path(output) / LOG) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def export_weights(checkpoint: str | Path, output: str | Path, use_ema: bool | None = None,
                   dtype: str = "fp16") -> Path:
    """Write a run's weights as safetensors in ``dtype`` (SSM decay parameters stay fp32).

    ``use_ema=None`` takes the EMA weights when the checkpoint has them. The file's metadata
    holds the class names, the model name and the epoch, when the checkpoint has them.
    """
    from safetensors.torch import save_file

    from vimstm.models.checkpoint import extract_state_dict, read_checkpoint

    obj = read_checkpoint(checkpoint)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{checkpoint} does not hold a state dict")
    has_ema = isinstance(obj.get("model_ema"), dict) and bool(obj["model_ema"])
    if use_ema is None:
        use_ema = has_ema
    if use_ema and not has_ema:
        raise CheckpointError(f"{checkpoint} has no EMA weights: export with --weights raw")
    sd = extract_state_dict(obj, use_ema=use_ema)
    cast = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    tensors = {}
    for k, v in sd.items():
        keep = not v.is_floating_point() or k.endswith(FP32_SUFFIXES)
        tensors[k] = (v if keep else v.to(cast)).contiguous()
    meta = {"format": "pt", "weights": "ema" if use_ema else "raw", "dtype": dtype}
    args = obj.get("args") or {}
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    if obj.get("classes"):
        meta["classes"] = json.dumps(list(obj["classes"]))
    for key in ("model", "method", "ratio", "r", "flops", "merge_opt"):
        if args.get(key) not in (None, []):
            meta[key] = json.dumps(args[key]) if isinstance(args[key], list) else str(args[key])
    if "epoch" in obj:
        meta["epoch"] = str(int(obj["epoch"]) + 1)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out

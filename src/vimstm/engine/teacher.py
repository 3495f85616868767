"""``vimstm teacher``: train a convolutional teacher for ``vimstm train --teacher`` (DeiT-style
distillation of a Vision Mamba trained from scratch on a small data set).

Small images only (all of one size, e.g. CIFAR's 32x32): the whole training set is decoded once
and kept on the device as uint8, and each batch is augmented there (random crop from a 4-px
reflect padding, horizontal flip, optionally cutout), so no data loader limits a GPU. SGD with
Nesterov momentum, linear warm-up then cosine decay to zero, label smoothing, weight decay on
the convolution and linear weights only, bf16 autocast on CUDA. The input normalisation is the
training set's own per-channel mean and std, stored in the teacher file with its classes; the
student re-normalises its batch to it. The defaults (batch 512, lr 0.4, 120 epochs) gave a
ResNet-18 of 91.67% on the project's CIFAR-10 test split in 165 s on one H100; 40 epochs at lr
0.2 gave 90.84 (the data are JPEG files of quality 75, which caps every model below the usual
CIFAR-10 figures). A run writes its file once, at the end: an interrupted run starts again.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vimstm.errors import ConfigError, DataError

PAD = 4  # random-crop padding (pixels per side)


def register(subparsers: Any) -> None:
    """Add ``teacher`` to the ``vimstm`` command line."""
    from vimstm.models.cnn import TEACHERS

    p = subparsers.add_parser(
        "teacher", help="train a convolutional teacher for `vimstm train --teacher`",
        description="Train a small-image ResNet on a class-folder or .tar data set of small "
                    "images (data kept on the device) and write it as a teacher file.")
    p.add_argument("--data", required=True, help="training data: class folders or .tar/.tar.xz")
    p.add_argument("--val-data", default=None, help="validation data (top-1 printed)")
    p.add_argument("--output", "-o", required=True, help="teacher file to write (.safetensors)")
    p.add_argument("--arch", default="resnet18_small", choices=sorted(TEACHERS))
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.4, help="peak SGD learning rate")
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--cutout", type=int, default=0, metavar="PX",
                   help="after crop and flip, zero a PX x PX square at a uniformly random "
                        "centre of each image (clipped at the borders; DeVries & Taylor 2017, "
                        "16 for CIFAR-10); 0: off")
    p.add_argument("--smoothing", type=float, default=0.1,
                   help="label smoothing (0 for a teacher of --distill-type soft: smoothing "
                        "blurs the logits a soft student learns from; Mueller et al. 2019)")
    p.add_argument("--amp", choices=("auto", "bf16", "none"), default="auto",
                   help="autocast precision (auto: bf16 on CUDA, none on the CPU)")
    p.add_argument("--eval-every", type=int, default=5, metavar="K",
                   help="evaluate --val-data every K epochs and after the last one")
    p.add_argument("--limit-train", type=int, default=None, help="use only N training images")
    p.add_argument("--workers", type=int, default=8, help="image-decoding processes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_teacher)


def _validate(args: argparse.Namespace) -> None:
    checks = [
        (args.epochs >= 1, "--epochs must be at least 1"),
        (args.batch_size >= 2, "--batch-size must be at least 2"),
        (args.lr > 0, "--lr must be positive"),
        (args.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
        (args.weight_decay >= 0, "--weight-decay must be >= 0"),
        (0 <= args.smoothing < 1, "--smoothing must be in [0, 1)"),
        (args.eval_every >= 1, "--eval-every must be at least 1"),
        (args.limit_train is None or args.limit_train >= 1,
         "--limit-train must be at least 1 (leave it out to use every image)"),
        (args.workers >= 0, "--workers must be >= 0"),
        (args.cutout >= 0, "--cutout must be >= 0 (0: off)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def load_images(path: str, workers: int, limit: int | None = None,
                seed: int = 0) -> tuple[Tensor, Tensor, list[str]]:
    """Every image of ``path`` as one uint8 tensor (N, C, H, W), the labels and the classes."""
    from torchvision.transforms.functional import pil_to_tensor

    from vimstm.data import open_dataset

    ds = open_dataset(path, transform=pil_to_tensor)
    classes = list(ds.classes)
    index = list(range(len(ds)))
    if limit is not None and limit < len(ds):
        g = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(ds), generator=g)[:limit].tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, index), batch_size=500,
                                         num_workers=workers, collate_fn=_collate_same_size)
    xs, ys = [], []
    for x, y in loader:
        if len(y):  # a batch of only unreadable files gives nothing
            xs.append(x)
            ys.append(y)
    if not xs:
        raise DataError(f"no readable images in {path}")
    shapes = {tuple(x.shape[1:]) for x in xs}
    if len(shapes) > 1:
        raise DataError(f"`vimstm teacher` needs images of one size; {path} holds {shapes}")
    return torch.cat(xs), torch.cat(ys), classes


def _collate_same_size(batch: list[tuple[Tensor, int] | None]) -> tuple[Tensor, Tensor]:
    from vimstm.data import collate_skip

    shapes = {tuple(b[0].shape) for b in batch if b is not None}
    if len(shapes) > 1:
        raise DataError(f"`vimstm teacher` needs images of one size; found {sorted(shapes)}")
    x, y, _ = collate_skip(batch)
    return x, y


def augment(x: Tensor, gen: torch.Generator, cutout: int = 0) -> Tensor:
    """Random crop from a ``PAD``-pixel reflect padding and horizontal flip, per image; then,
    with ``cutout`` > 0, a ``cutout`` x ``cutout`` square around a uniformly random pixel of
    each image set to 0 (the training set's mean after normalisation), clipped at the
    borders."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (PAD, PAD, PAD, PAD), mode="reflect")
    oy = torch.randint(0, 2 * PAD + 1, (b, 1), device=dev, generator=gen)
    ox = torch.randint(0, 2 * PAD + 1, (b, 1), device=dev, generator=gen)
    rows = (oy + torch.arange(h, device=dev)).view(b, 1, h, 1)
    cols = (ox + torch.arange(w, device=dev)).view(b, 1, 1, w)
    crop = padded[torch.arange(b, device=dev).view(b, 1, 1, 1),
                  torch.arange(c, device=dev).view(1, c, 1, 1), rows, cols]
    flip = torch.rand(b, device=dev, generator=gen) < 0.5
    out = torch.where(flip.view(b, 1, 1, 1), crop.flip(3), crop)
    if cutout > 0:
        cy = torch.randint(0, h, (b, 1, 1, 1), device=dev, generator=gen)
        cx = torch.randint(0, w, (b, 1, 1, 1), device=dev, generator=gen)
        lo = cutout // 2
        r = torch.arange(h, device=dev).view(1, 1, h, 1) - cy
        q = torch.arange(w, device=dev).view(1, 1, 1, w) - cx
        hole = (r >= -lo) & (r < cutout - lo) & (q >= -lo) & (q < cutout - lo)
        out = out.masked_fill(hole, 0.0)
    return out


def run_teacher(args: argparse.Namespace) -> int:
    from vimstm.engine.paths import check_output_file
    from vimstm.models.cnn import build_teacher, save_teacher
    from vimstm.runtime import autocast

    _validate(args)
    out = Path(args.output)
    check_output_file(out, "--output")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = {"auto": "bf16" if device.type == "cuda" else None, "bf16": "bf16",
           "none": None}[args.amp]
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input shape: let cuDNN pick its kernels

    t0 = time.perf_counter()
    x_train, y_train, classes = load_images(args.data, args.workers, args.limit_train,
                                            args.seed)
    val = None
    if args.val_data:
        from vimstm.data import check_classes

        x_val, y_val, val_classes = load_images(args.val_data, args.workers)
        check_classes(val_classes, f"the training data ({args.data})", expected=classes,
                      data=f"the validation data ({args.val_data})")
        val = (x_val, y_val)
    if args.cutout > min(x_train.shape[2:]):
        raise ConfigError(f"--cutout {args.cutout} is larger than the images "
                          f"({tuple(x_train.shape[2:])}): use at most their side")
    if x_train.shape[0] < args.batch_size:
        raise ConfigError(f"--batch-size {args.batch_size} is larger than the training data "
                          f"({x_train.shape[0]} images): lower it")
    scaled = x_train.float() / 255
    mean = tuple(scaled.mean((0, 2, 3)).tolist())
    std = tuple(scaled.std((0, 2, 3)).tolist())
    del scaled
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def prepare(x: Tensor) -> Tensor:
        x = (x.to(device).float() / 255 - m) / s
        return x.contiguous(memory_format=torch.channels_last)

    x_train, y_train = x_train.to(device), y_train.to(device)
    model = build_teacher(args.arch, len(classes)).to(device)
    model = model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": rest, "weight_decay": 0.0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = x_train.shape[0] // args.batch_size
    total, warm = args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))

    print(f"training teacher {args.arch} on {x_train.shape[0]} images "
          f"{tuple(x_train.shape[1:])}, {len(classes)} classes, on {device}, batch "
          f"{args.batch_size}, {steps_per_epoch} steps/epoch, amp {amp or 'none'}, data ready "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    step, top1 = 0, None
    for epoch in range(args.epochs):
        model.train()
        t_ep = time.perf_counter()
        perm = torch.randperm(x_train.shape[0], device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb = augment(prepare(x_train[idx]), gen, args.cutout).contiguous(
                memory_format=torch.channels_last)
            yb = y_train[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with autocast(device, amp):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=args.smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(-1) == yb).sum()
        loss_v = loss_sum.item() / steps_per_epoch
        if not math.isfinite(loss_v):
            raise ConfigError(f"the teacher's loss became {loss_v} in epoch {epoch + 1}: lower "
                              "--lr")
        secs = time.perf_counter() - t_ep
        line = (f"epoch {epoch + 1}/{args.epochs} | loss {loss_v:.4f} | train top-1 "
                f"{100 * correct.item() / (steps_per_epoch * args.batch_size):.2f}")
        if val is not None and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            top1 = evaluate_teacher(model, val[0], val[1], prepare, device, amp)
            line += f" | val top-1 {top1:.2f}"
        line += f" | {steps_per_epoch * args.batch_size / secs:.0f} img/s | {secs:.1f} s"
        print(line, flush=True)
    extra = {"epochs": args.epochs, "cutout": args.cutout, "val_top1": top1,
             "train_images": int(x_train.shape[0]),
             "command": " ".join(["vimstm", *sys.argv[1:]])}
    save_teacher(model, out, args.arch, classes, mean, std, extra)
    print(f"wrote {out} (val top-1 {'n/a' if top1 is None else f'{top1:.2f}'}, "
          f"{time.perf_counter() - t0:.0f} s)")
    return 0


@torch.no_grad()
def evaluate_teacher(model: nn.Module, x: Tensor, y: Tensor, prepare: Any,
                     device: torch.device, amp: str | None, batch: int = 1000) -> float:
    """Top-1 (percent) of ``model`` on uint8 images ``x`` with labels ``y``."""
    from vimstm.runtime import autocast

    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        with autocast(device, amp):
            pred = model(prepare(x[i:i + batch])).argmax(-1)
        correct += int((pred.cpu() == y[i:i + batch].cpu()).sum())
    return 100.0 * correct / max(x.shape[0], 1)

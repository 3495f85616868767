"""Convolutional teachers for distilling a Vision Mamba trained from scratch (DeiT's recipe).

A convnet's locality is what a small data set cannot teach a token mixer; DeiT distils it
from a convnet teacher. :class:`ResNetSmall` is ResNet-18 for small images (a 3x3 stride-1
stem, no max-pool: the standard CIFAR variant), trained by ``vimstm teacher`` and read by
``vimstm train --teacher FILE``. A teacher file is safetensors with its architecture, classes
and input normalisation in the metadata, so the student can feed it correctly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vimstm.errors import CheckpointError, ConfigError

TEACHER_FORMAT = "vimstm-teacher-1"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNetSmall(nn.Module):
    """ResNet for 32-64 px images: 3x3 stem at full resolution, stages of ``blocks`` blocks."""

    def __init__(self, num_classes: int, blocks: tuple[int, ...] = (2, 2, 2, 2),
                 width: int = 64, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


TEACHERS: dict[str, dict[str, Any]] = {
    "resnet18_small": dict(blocks=(2, 2, 2, 2), width=64),
}


def build_teacher(arch: str, num_classes: int) -> ResNetSmall:
    """An untrained teacher of a registered architecture (see :data:`TEACHERS`)."""
    if arch not in TEACHERS:
        raise ConfigError(f"unknown teacher architecture {arch!r}; choose one of "
                          f"{', '.join(TEACHERS)}")
    return ResNetSmall(num_classes, **TEACHERS[arch])


def save_teacher(model: ResNetSmall, path: str | Path, arch: str, classes: list[str],
                 mean: tuple[float, ...], std: tuple[float, ...],
                 extra: dict | None = None) -> Path:
    """Write the teacher as fp32 safetensors with what a student needs to use it, atomically."""
    from safetensors.torch import save_file

    from vimstm.models.checkpoint import atomic_write

    meta = {"format": TEACHER_FORMAT, "architecture": arch, "classes": json.dumps(classes),
            "mean": json.dumps(list(mean)), "std": json.dumps(list(std)),
            **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    sd = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


def load_teacher(path: str | Path) -> tuple[ResNetSmall, dict[str, Any]]:
    """The teacher in ``path`` (eval mode, frozen) and its metadata: architecture, classes,
    mean, std. Only files written by :func:`save_teacher` (``vimstm teacher``) are accepted."""
    from vimstm.models.checkpoint import checkpoint_format, read_checkpoint, safetensors_metadata

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--teacher {p}: no such file (train one with `vimstm teacher`)")
    if checkpoint_format(p) != "safetensors":
        raise CheckpointError(f"--teacher {p} is not a readable safetensors file; train a "
                              "teacher with `vimstm teacher`")
    sd = read_checkpoint(p)  # a damaged file is reported as corrupt
    meta = safetensors_metadata(p)
    if meta.get("format") != TEACHER_FORMAT:
        raise CheckpointError(f"--teacher {p} is not a teacher file written by `vimstm teacher` "
                              "(its metadata names no teacher architecture)")
    info = {"architecture": meta["architecture"], "classes": json.loads(meta["classes"]),
            "mean": tuple(json.loads(meta["mean"])), "std": tuple(json.loads(meta["std"]))}
    model = build_teacher(info["architecture"], len(info["classes"]))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"--teacher {p} does not match its architecture "
                              f"{info['architecture']!r} (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]})")
    return model.eval().requires_grad_(False), info


class Teachers(nn.Module):
    """Frozen teachers as one: the mean of their logits on the student's batch, each teacher
    fed the batch re-normalised to its own statistics (``x * a + b``). An ensemble of a few
    independently trained convnets is a stronger and smoother teacher than any one of them."""

    def __init__(self, teachers: list[nn.Module], student_mean: tuple[float, ...],
                 student_std: tuple[float, ...], infos: list[dict[str, Any]]) -> None:
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        s_mean = torch.tensor(student_mean, dtype=torch.float32).view(1, -1, 1, 1)
        s_std = torch.tensor(student_std, dtype=torch.float32).view(1, -1, 1, 1)
        for i, info in enumerate(infos):
            t_mean = torch.tensor(info["mean"], dtype=torch.float32).view(1, -1, 1, 1)
            t_std = torch.tensor(info["std"], dtype=torch.float32).view(1, -1, 1, 1)
            self.register_buffer(f"a{i}", s_std / t_std, persistent=False)
            self.register_buffer(f"b{i}", (s_mean - t_mean) / t_std, persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> Teachers:
        return super().train(False)  # always in eval mode (BatchNorm statistics stay fixed)

    def forward(self, x: Tensor) -> Tensor:
        out = None
        for i, t in enumerate(self.teachers):
            xt = torch.addcmul(getattr(self, f"b{i}"), x, getattr(self, f"a{i}"))
            y = t(xt.contiguous(memory_format=torch.channels_last)).float()
            out = y if out is None else out + y
        return out / len(self.teachers)


def load_teachers(paths: list[str | Path], student_mean: tuple[float, ...],
                  student_std: tuple[float, ...]) -> tuple[Teachers, list[str]]:
    """The teacher files ``paths`` (written by ``vimstm teacher``) as one :class:`Teachers`
    for a student normalised by ``student_mean``/``student_std``, and their classes (which
    must agree between the files)."""
    models, infos = [], []
    for p in paths:
        m, info = load_teacher(p)
        if infos and info["classes"] != infos[0]["classes"]:
            raise CheckpointError(f"--teacher {p} predicts other classes than {paths[0]} "
                                  f"({info['classes'][:4]} against {infos[0]['classes'][:4]})")
        models.append(m.to(memory_format=torch.channels_last))
        infos.append(info)
    return Teachers(models, student_mean, student_std, infos), infos[0]["classes"]

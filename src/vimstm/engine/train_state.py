"""What a training run saves and restores: checkpoints, resume, RNG states and the log.

``OUTPUT/last.pth`` holds the model, EMA, optimizer, scheduler, scaler, epoch, step, the args as
a plain dict, the class names, the log history and the RNG states, all loadable with
``torch.load(weights_only=True)``; ``best.pth`` is the same for the best validation top-1.
``OUTPUT/log.jsonl`` is one JSON entry per epoch, rewritten from the checkpoint on resume.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vimstm.errors import CheckpointError
from vimstm.models.checkpoint import atomic_save, atomic_write, load_state_dict_checked

LAST, BEST, LOG = "last.pth", "best.pth", "log.jsonl"
START_EVAL = "start_eval.json"  # --eval-start: the starting weights' scores


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """The RNG states as tensors and plain containers (loadable with weights_only=True)."""
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
    """Restore what :func:`rng_states` returned (CUDA states only for the same GPU count)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # another number of GPUs
            torch.cuda.set_rng_state_all(state["cuda"])


def plain(v: Any) -> Any:
    """``v`` as JSON-like plain data (what ``weights_only=True`` loads back)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return str(v)


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as a plain dict (callables such as ``func`` left out)."""
    return {k: plain(v) for k, v in vars(args).items() if not callable(v)}


@dataclass
class TrainState:
    """The objects of a run that a checkpoint saves and a resume restores."""

    model: nn.Module
    optimizer: Any
    scheduler: Any  # timm scheduler
    scaler: torch.amp.GradScaler
    ema: Any = None  # timm ModelEmaV3, or None

    def checkpoint(self, epoch: int, step: int, args: argparse.Namespace, classes: list[str],
                   history: list[dict[str, Any]], best: float) -> dict[str, Any]:
        """Everything ``last.pth`` holds after ``epoch`` (0-based) and ``step`` updates."""
        from vimstm import __version__

        return {
            "model": self.model.state_dict(),
            "model_ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {k: plain(v) for k, v in self.scheduler.state_dict().items()},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": epoch,
            "step": step,
            "args": plain_args(args),
            "classes": list(classes),
            "history": history,
            "best_top1": best,
            "rng": rng_states(),
            "vimstm_version": __version__,
        }

    def restore(self, ckpt: dict[str, Any], path: Path,
                args: argparse.Namespace) -> tuple[int, int, list[dict[str, Any]], float]:
        """Load ``ckpt`` into the run; returns (next epoch, step, history, best top-1).

        Args:
            ckpt: a checkpoint written by :meth:`checkpoint` (read with weights_only=True).
            path: where it was read from (for error messages).
            args: this run's arguments; the scheduler state is kept only for the same --epochs.
        """
        for key in ("model", "optimizer", "epoch", "step"):
            if key not in ckpt:
                raise CheckpointError(f"{path} is not a vimstm training checkpoint (no {key!r}); "
                                      "to start from weights use `vimstm finetune --checkpoint`")
        load_state_dict_checked(self.model, ckpt["model"], source=str(path))
        if self.ema is not None:
            load_state_dict_checked(self.ema.module, ckpt.get("model_ema") or ckpt["model"],
                                    source=f"{path} (EMA)")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"the optimizer state in {path} does not fit this run ({e}); "
                                  "resume with the same options, or start a new --output") from None
        saved = ckpt.get("args", {})
        saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
        step = int(ckpt["step"])
        if ckpt.get("scheduler") and saved.get("epochs") == args.epochs:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if args.sched_on == "step":
            self.scheduler.step_update(step)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("rng"):
            set_rng_states(ckpt["rng"])
        best = ckpt.get("best_top1")
        history = list(ckpt.get("history", []))
        return int(ckpt["epoch"]) + 1, step, history, -1.0 if best is None else float(best)

    def save(self, out: Path, state: dict[str, Any], is_best: bool) -> None:
        """Write ``state`` as ``out/last.pth`` (and ``best.pth``), each atomically."""
        atomic_save(state, out / LAST)
        if is_best:
            atomic_save(state, out / BEST)


def resume_path(resume: str | None, out: Path) -> Path | None:
    """The checkpoint ``--resume`` names: a file, or ``auto`` for ``out/last.pth`` if present."""
    if not resume:
        return None
    if resume == "auto":
        p = out / LAST
        return p if p.exists() else None
    p = Path(resume)
    if not p.exists():
        raise CheckpointError(f"--resume {p}: no such file (use --resume auto to continue the "
                              f"run in {out} if there is one)")
    return p


def write_log(out: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``out/log.jsonl`` from ``history``, atomically."""
    atomic_write(out / LOG, "".join(json.dumps(e) + "\n" for e in history))


def iter_history(output: str | Path) -> Iterator[dict[str, Any]]:
    """The entries of a run's ``log.jsonl``."""
    with open(Path(output) / LOG) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)

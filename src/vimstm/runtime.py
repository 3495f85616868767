"""Precision names, autocast and device synchronisation shared by the commands."""

from __future__ import annotations

import contextlib

import torch

from vimstm.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
}
AMP_NAMES = ("fp16", "bf16")  # the autocast precisions; fp32 / none / None: no autocast


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``amp`` (``fp16``/``bf16``) on ``device``; a no-op for fp32.

    Args:
        device: the device the model runs on.
        amp: ``fp16``, ``bf16``, or ``None``/``""``/``fp32``/``none`` for full precision.
    """
    if amp in (None, "", "fp32", "none"):
        return contextlib.nullcontext()
    if amp not in AMP_NAMES:
        raise ConfigError(f"unknown amp mode {amp!r}; use fp16 or bf16 (or leave it out for fp32)")
    return torch.autocast(device_type=device.type, dtype=DTYPES[amp])


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing to wait for elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

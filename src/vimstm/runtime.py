"""Precision names, autocast, torch.compile modes and device synchronisation shared by the
commands."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

import torch
from torch import nn

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


#: ``torch.compile`` modes; ``reduce-overhead`` also replays CUDA graphs (cudagraph trees),
#: which removes the host's kernel-launch time from an eager step.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(compile: bool | str | None) -> str | None:
    """The ``torch.compile`` mode asked for: None (off), or one of :data:`COMPILE_MODES`
    (``True`` means ``"default"``)."""
    if compile is None or compile is False:
        return None
    mode = "default" if compile is True else str(compile)
    if mode not in COMPILE_MODES:
        raise ConfigError(f"unknown compile mode {mode!r}; choose one of "
                          f"{', '.join(COMPILE_MODES)}")
    return mode


def compiled(model: nn.Module, compile: bool | str | None,
             fullgraph: bool = True) -> nn.Module:
    """``model`` through ``torch.compile`` in the given mode, or ``model`` itself when off."""
    mode = compile_mode(compile)
    if mode is None:
        return model
    return torch.compile(model, fullgraph=fullgraph, mode=None if mode == "default" else mode)


def mark_step(compile: bool | str | None) -> None:
    """Tell cudagraph trees that a new iteration begins (``reduce-overhead`` only), so outputs
    of the previous replay may be overwritten."""
    if compile_mode(compile) == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing to wait for elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt(3) parameters
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep and reuse the memory of freed tensors (Linux, for CPU work).

    By default glibc serves large blocks with fresh mmaps and trims freed heap memory, so that
    every new activation tensor page-faults its memory in again: ~10% of a CPU forward of
    vim_tiny_cifar10 at batch 8 (``benchmarks/cpu_speed.py``). Blocks up to 32 MiB (glibc's
    limit) then come from the heap, and up to 1 GiB of freed heap stays with the process.
    Returns whether it was applied: not where malloc is not glibc's, or where the environment
    already tunes it (``MALLOC_*_``, ``GLIBC_TUNABLES``).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" \
            or any(v in os.environ for v in _MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False

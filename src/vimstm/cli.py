"""The ``vimstm`` command line: one sub-command per job.

Each sub-command lives in the module that does the work and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func`` to a callable
``func(args) -> int | None``. Errors that are the user's to fix (:class:`VimstmError`) print one
line and exit with status 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from vimstm import __version__
from vimstm.errors import VimstmError

COMMAND_MODULES = (
    "vimstm.engine.evaluate",  # eval
    "vimstm.engine.benchmark",  # bench
    "vimstm.engine.sweep",  # sweep
    "vimstm.engine.calibrate",  # calibrate
    "vimstm.engine.train",  # train, finetune
    "vimstm.engine.teacher",  # teacher
    "vimstm.viz",  # viz
    "vimstm.engine.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vimstm",
        description="Vision Mamba with Sequential Token Merging: evaluate, benchmark, train.",
    )
    parser.add_argument("--version", action="version", version=f"vimstm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    list_p = sub.add_parser("models", help="list the registered models")
    list_p.set_defaults(func=_list_models)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command is not part of this build
                continue
            raise
        module.register(sub)
    return parser


def _list_models(args: argparse.Namespace) -> int:
    from vimstm.models.registry import list_specs

    for s in list_specs():
        print(f"{s.alias:20s} {s.name}")
    return 0


def cpu_threads() -> int:
    """Threads for CPU work: one fewer than the cores this process may use (at least one).

    On a machine with few cores, torch's default of one thread per core competes with any other
    process (data loading, a second job) and OpenMP's busy-waiting threads then stall each other:
    a batch-8 forward took 101-137 s with two threads on a busy two-core machine against 9 s
    with one. ``OMP_NUM_THREADS`` or ``VIMSTM_THREADS`` set in the environment win.
    """
    for var in ("VIMSTM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    import torch

    from vimstm.runtime import keep_freed_memory

    torch.set_num_threads(cpu_threads())
    if not torch.cuda.is_available():  # the CPU path allocates its activations per op
        keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except VimstmError as e:
        print(f"vimstm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vimstm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

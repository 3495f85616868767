"""Token merging for Vision Mamba: STM and the baselines, as a patch on any vimstm model.

>>> import vimstm
>>> model = vimstm.create_model("vim_tiny")
>>> vimstm.patch(model, method="stm", ratio=0.3, protect=2, fading="ssm")
>>> logits = model(images); model.merge_info["tokens_per_block"]

``patch`` sets ``model.merger`` (a plain object, so the state dict and checkpoints are
unchanged) and turns on the mixers' SSM recording where the method reads it; ``unpatch`` undoes
both. Methods: ``stm``, ``mtr``, ``tome``, ``rmeeto``, ``prune-top``, ``prune-norm``, ``random``
(see the module of each). Schedules: :mod:`vimstm.merge.schedule`: ``ratio`` (share of patch
tokens gone by the last block), ``reduction`` (the papers' mean share removed per block),
``flops`` (share of the dense GFLOPs kept), ``r`` (tokens per step), and ``schedule``: a preset
(``"even-blocks"``) or a file written by ``vimstm calibrate``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from vimstm.errors import ConfigError
from vimstm.merge.base import Merger
from vimstm.merge.bipartite import BipartiteMerger, RMeeToMerger
from vimstm.merge.mtr import MTRMerger
from vimstm.merge.prune import PruneMerger, TopPruneMerger
from vimstm.merge.schedule import (
    PRESETS,
    check_preset,
    check_ratio,
    check_shape,
    even_blocks,
    even_blocks_r,
    from_flops,
    from_reduction,
    load_schedule_file,
    parse_r,
    shaped_schedule,
)
from vimstm.merge.stm import RandomMerger, STMMerger

_CLASSES: dict[str, type[Merger]] = {
    "stm": STMMerger,
    "mtr": MTRMerger,
    "tome": BipartiteMerger,
    "rmeeto": RMeeToMerger,
    "prune-top": TopPruneMerger,
    "prune-norm": PruneMerger,
    "random": RandomMerger,
}
METHODS: tuple[str, ...] = tuple(_CLASSES)
# Default ratio/flops schedule: merge after every (depth // 4)-th block (blocks 6, 12, 18 of a
# 24-block model), each step removing the same share of its tokens (shape="geometric"). On the
# H100 this is what makes merging pay (few steps: BENCHMARKS.md), and on the CIFAR-10 reference
# model it was also the more accurate schedule at equal GFLOPs (RESULTS.md). every=1 with
# shape="even" is ToMe's per-block constant schedule.
DEFAULT_EVERY_DIV = 4
DEFAULT_SHAPE = "geometric"
DENSE_NAMES = ("none", "dense")  # --method values that mean no merging

__all__ = [
    "METHODS",
    "Merger",
    "add_merge_args",
    "build_merger",
    "is_dense",
    "merge_method",
    "parse_merge_opts",
    "parse_r_arg",
    "patch",
    "patch_from_args",
    "unpatch",
]


def _dims(model: Any) -> tuple[int, int, int]:
    """(depth, patch tokens, class-token index) of a VisionMamba."""
    if not hasattr(model, "layers") or not hasattr(model, "patch_embed"):
        raise ConfigError(f"merging needs a vimstm VisionMamba model, got {type(model).__name__}")
    m = model.patch_embed.num_patches
    return len(model.layers), m, m // 2


def build_merger(
    model: Any,
    method: str = "stm",
    ratio: float | None = None,
    r: Any = None,
    flops: float | None = None,
    trace_source: bool = False,
    reduction: float | None = None,
    schedule: Any = None,
    **options: Any,
) -> Merger:
    """The merger ``patch`` would install, with its schedule checked (nothing is changed)."""
    if method not in _CLASSES:
        raise ConfigError(f"unknown merging method {method!r}; choose one of {', '.join(METHODS)}")
    every = options.pop("every", None)
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"every={every!r} must be an int >= 1 (merge after every k-th block)")
    shape = options.pop("shape", None)
    if shape is not None:
        check_shape(shape)
    merger = _CLASSES[method](**options)
    depth, m, c = _dims(model)
    given = [k for k, v in (("ratio", ratio), ("r", r), ("flops", flops),
                            ("reduction", reduction)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give only one of ratio, r, flops, reduction (got {', '.join(given)})")
    named = schedule if isinstance(schedule, str) and schedule in PRESETS else None
    if isinstance(schedule, str) and named is None and not schedule.endswith(".json") \
            and not os.path.exists(schedule):
        check_preset(schedule)  # neither a preset nor a file: says which presets exist
    if schedule is not None and named is None:  # a schedule file (or its parsed dict)
        if given or every is not None or shape is not None:
            extra = ", ".join(given + [k for k, v in (("every", every), ("shape", shape))
                                       if v is not None])
            raise ConfigError(f"a schedule file fixes the tokens removed at every block; drop "
                              f"{extra} or drop the schedule file")
        doc = load_schedule_file(schedule, depth, m)
        return _finish(merger, doc["schedule"], options, m, c, trace_source, doc["pre"])
    if named is not None:
        if every is not None or shape is not None:
            raise ConfigError(f"schedule={named!r} fixes every and shape; drop them")
        r_even = _even_blocks_r(model, merger, named, depth, m, c, options, ratio, r, flops,
                                reduction)
        pre, steps = even_blocks(depth, r_even)
        return _finish(merger, steps, options, m, c, trace_source, pre)
    if r is not None and ((every or 1) != 1 or (shape or "even") != "even"):
        raise ConfigError("every= and shape= apply to ratio/flops/reduction schedules; with r, "
                          "write the list yourself")
    # defaults (see DEFAULT_EVERY_DIV): few merge steps, each removing a share of its tokens
    every = every if every is not None else max(1, depth // DEFAULT_EVERY_DIV)
    shape = shape if shape is not None else DEFAULT_SHAPE
    if not given:
        raise ConfigError("give a schedule: ratio=FRACTION, reduction=FRACTION, "
                          "r=TOKENS_PER_BLOCK, flops=FRACTION or schedule=FILE")
    if ratio is not None:
        total = round(check_ratio(ratio) * m)
        schedule = shaped_schedule(depth, total, m, every, shape)
    elif reduction is not None:
        schedule = from_reduction(depth, m, reduction, every, shape)
    elif r is not None:
        schedule = parse_r(depth, r)
    else:
        from vimstm.flops import count_flops

        def feasible(s: list[int]) -> bool:
            return _try_schedule(merger, s, "protect" in options, m + 1, c)

        def gmacs(s: list[int]) -> float:
            if not feasible(s):
                return float("inf")
            return count_flops(model, merger=merger).gmacs_literature

        schedule = from_flops(depth, m, float(flops), gmacs, feasible, every,  # type: ignore[arg-type]
                              shape)
    return _finish(merger, schedule, options, m, c, trace_source)


def _even_blocks_r(model: Any, merger: Merger, name: str, depth: int, m: int, c: int,
                   options: dict[str, Any], ratio: Any, r: Any, flops: Any,
                   reduction: Any) -> int:
    """The one ``r`` of the even-blocks preset that meets the given target."""
    n_steps = 1 + (depth - 1) // 2
    if r is not None:
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(f"schedule={name!r} takes one int r (tokens per step), got {r!r}")
        return r
    if reduction is not None:
        return even_blocks_r(depth, m, reduction)
    if ratio is not None:
        return round(check_ratio(ratio) * m / n_steps)
    if flops is None:
        raise ConfigError(f"schedule={name!r} needs r=, reduction=, ratio= or flops=")
    from vimstm.flops import count_flops

    if not isinstance(flops, (int, float)) or not 0.0 < float(flops) <= 1.0:
        raise ConfigError(f"flops {flops!r} must be the fraction of dense GFLOPs to keep, in "
                          "(0, 1]")
    if merger.needs_ssm:
        merger.check_pre()
    for r_even in range(m // n_steps + 1):  # smallest r that meets the target
        pre, steps = even_blocks(depth, r_even)
        merger.pre = pre
        if not _try_schedule(merger, steps, "protect" in options, m + 1, c):
            break
        rep = count_flops(model, merger=merger)
        if rep.gmacs_literature <= flops * rep.dense_gmacs_literature:
            return r_even
    raise ConfigError(f"flops={flops} is not reachable with schedule={name!r} and this method; "
                      "ask for more GFLOPs")


def _finish(merger: Merger, schedule: list[int], options: dict[str, Any], m: int, c: int,
            trace_source: bool, pre: int = 0) -> Merger:
    """Check ``schedule`` (and ``pre``) against the method and record it on ``merger``."""
    if pre:
        merger.check_pre()
    merger.pre = pre
    if pre + sum(schedule) > m - 1:
        raise ConfigError(f"the schedule removes {pre + sum(schedule)} of {m} patch tokens; "
                          "keep some")
    if not _try_schedule(merger, schedule, "protect" in options, m + 1, c):
        merger.simulate(m + 1, c)  # fails again, raising the clear error of the step at fault
    merger.trace_source = bool(trace_source)
    return merger


def _try_schedule(
    merger: Merger, schedule: list[int], given: bool, tokens: int, cls_index: int
) -> bool:
    """Set ``schedule``; whether it can run. Shrinks the *default* protected window if needed.

    The default window (4 tokens per side) was chosen on 196-patch models; on toy models (16
    patches) it would forbid most ratios, so the largest window <= the default that lets the
    schedule run is used and recorded in ``merger.options``. A window the user gave is kept.
    """
    merger.schedule = schedule
    default = merger.option_defaults.get("protect")
    keep = given or default is None
    windows = [merger.options.get("protect")] if keep else range(default, -1, -1)
    for w in windows:
        if w is not None:
            merger.options["protect"] = w
        try:
            merger.simulate(tokens, cls_index)
            return True
        except ConfigError:
            continue
    if not given and default is not None:
        merger.options["protect"] = default
    return False


def patch(
    model: Any,
    method: str = "stm",
    ratio: float | None = None,
    r: Any = None,
    flops: float | None = None,
    trace_source: bool = False,
    reduction: float | None = None,
    schedule: Any = None,
    graphs: bool = True,
    **options: Any,
) -> Any:
    """Install token merging on ``model`` in place and return it (see the module docstring).

    ``graphs``: on CUDA, inference calls replay a CUDA graph per input shape
    (:mod:`vimstm.merge.graphs`; a no-op on the CPU, in training and under autograd).
    """
    merger = build_merger(model, method, ratio, r, flops, trace_source, reduction, schedule,
                          **options)
    unpatch(model)
    merger.attach(model)
    if graphs:
        from vimstm.merge import graphs as cuda_graphs

        cuda_graphs.install(model)
    return model


def unpatch(model: Any) -> Any:
    """Remove merging from ``model`` (restores the mixers' recording flags) and return it."""
    from vimstm.merge import graphs as cuda_graphs

    cuda_graphs.remove(model)
    merger = getattr(model, "merger", None)
    if merger is not None:
        merger.detach(model)
    return model


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_merge_opts(items: list[str] | None) -> dict[str, Any]:
    """``["protect=2", "fading=gamma"]`` -> ``{"protect": 2, "fading": "gamma"}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--merge-opt {item!r} must look like KEY=VALUE, e.g. protect=2")
        out[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return out


def is_dense(method: str | None) -> bool:
    """Whether a ``--method`` value means the dense model (no merging)."""
    return method is None or method in DENSE_NAMES


def parse_r_arg(text: str | None) -> Any:
    """``"8"`` -> 8; ``"8,8,4"`` -> [8, 8, 4]; ``"8:-0.5"`` -> (8, -0.5)."""
    if text is None:
        return None
    try:
        if ":" in text:
            base, inflect = text.split(":", 1)
            return (int(base), float(inflect))
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        return int(text)
    except ValueError:
        raise ConfigError(
            f"--r {text!r}: give an int (8), a list (8,8,4) or r:inflection (8:-0.5)"
        ) from None


def add_merge_args(parser: argparse.ArgumentParser) -> None:
    """Add --method, --ratio, --reduction, --r, --flops, --schedule and --merge-opt."""
    g = parser.add_argument_group("token merging")
    g.add_argument("--method", default=None,
                   help=f"merging method: {', '.join(METHODS)} (default: none, the dense model)")
    g.add_argument("--ratio", type=float, default=None,
                   help="fraction of patch tokens removed by the last block, in [0, 0.9)")
    g.add_argument("--reduction", type=float, default=None,
                   help="mean share of patch tokens removed per block, in [0, 0.9): the "
                   "papers' reduction ratio (AMVim, R-MeeTo: r=5/8/11/14 at every even block "
                   "is 0.17/0.27/0.36/0.46 on 196 tokens)")
    g.add_argument("--schedule", default=None, metavar="PRESET|FILE",
                   help=f"'{', '.join(PRESETS)}' (r tokens after blocks 0, 2, 4, ...: with "
                   "--r, --reduction, --ratio or --flops) or a JSON file written by "
                   "`vimstm calibrate` (the whole schedule)")
    g.add_argument("--r", default=None,
                   help="tokens removed after each block: 8, a list 8,8,4, or r:inflection")
    g.add_argument("--flops", type=float, default=None,
                   help="fraction of the dense GFLOPs to keep (the schedule is derived)")
    g.add_argument("--merge-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (e.g. protect=2, fading=gamma, weights=size)")


SCHEDULE_FLAGS = ("ratio", "reduction", "r", "flops", "schedule")


def merge_method(args: argparse.Namespace) -> str | None:
    """The merging method the flags ask for, or None for the dense model.

    A schedule (``--ratio``, ``--reduction``, ``--r``, ``--flops``, ``--schedule``) or
    ``--merge-opt`` without ``--method`` means STM: ``args.method`` becomes ``"stm"`` and one
    line on stderr says so. A schedule with ``--method none`` would be ignored, so it is refused.
    """
    import sys

    method = getattr(args, "method", None)
    given = [f"--{k}" for k in SCHEDULE_FLAGS if getattr(args, k, None) is not None]
    if getattr(args, "merge_opt", None):
        given.append("--merge-opt")
    if method is None and given:
        args.method = method = "stm"
        print(f"vimstm: {' '.join(given)} given without --method: merging with stm "
              "(--method to choose another)", file=sys.stderr)
    if is_dense(method):
        if given:
            raise ConfigError(f"{', '.join(given)} would be ignored with --method {method} (the "
                              "dense model); drop it, or name a merging method")
        return None
    return method


def patch_from_args(model: Any, args: argparse.Namespace) -> Any:
    """Patch ``model`` from parsed ``add_merge_args`` flags (see :func:`merge_method`); a no-op
    for the dense model."""
    method = merge_method(args)
    if method is None:
        return model
    return patch(
        model,
        method=method,
        ratio=getattr(args, "ratio", None),
        r=parse_r_arg(getattr(args, "r", None)),
        flops=getattr(args, "flops", None),
        reduction=getattr(args, "reduction", None),
        schedule=getattr(args, "schedule", None),
        **parse_merge_opts(getattr(args, "merge_opt", None)),
    )

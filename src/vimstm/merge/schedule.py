"""Merge schedules: how many tokens each merge step removes.

Merging happens between blocks: step ``i`` (``i = 0 .. depth-2``) runs after block ``i`` and
before block ``i+1``; ``r[i]`` is the number of tokens it removes. A schedule is given as

* ``r``: an int (the same ``r`` after every block but the last), a list with one entry per
  block (at most ``depth`` entries, padded with zeros; the last block's entry must be 0 since
  nothing follows it), or ToMe's ``(r, inflection)``: ``r`` on average, rising linearly from
  ``r * (1 - inflection)`` to ``r * (1 + inflection)`` over the steps (negative inflection:
  more merging early);
* ``ratio``: the fraction of the patch tokens removed by the last block, spread as evenly as
  possible over the steps (remainders go to the earliest steps, where there are more tokens);
  ``every=k`` (a patch option of every method) merges only after every k-th block;
* ``reduction``: the papers' reduction ratio, the mean over the blocks of the share of patch
  tokens removed before each block runs (:func:`mean_token_reduction`); the schedule of the
  chosen ``every``/``shape`` nearest to it is used;
* ``schedule="even-blocks"``: the peers' schedule, the same ``r`` before every even-indexed
  block (0, 2, 4, ...); the step before block 0 (``pre``) merges the embeddings. With ``r``,
  ``reduction``, ``ratio`` or ``flops``, the one ``r`` that meets it;
* a schedule file (:func:`load_schedule_file`, written by ``vimstm calibrate``);
* ``flops``: the fraction of the dense GFLOPs (literature convention) to keep; the smallest
  schedule of the chosen shape that reaches it is chosen with
  :func:`vimstm.flops.count_flops`'s closed form.

``shape`` (a patch option of every method) says how a ``ratio``/``flops`` total is spread over
the merge steps: ``"even"`` (the same count at each step, ToMe's constant schedule) or
``"geometric"`` (each step removes the same fraction of the tokens it receives: more tokens go
early, so fewer steps reach a given GFLOPs cut and more tokens reach the last blocks).

Every schedule is checked against what the method can remove at each step (e.g. adjacent
pairing can remove at most half of the mergeable tokens on each side of the class token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vimstm.errors import ConfigError

MAX_RATIO = 0.9


def parse_r(depth: int, r: int | Sequence[int] | tuple[int, float]) -> list[int]:
    """Per-step removals (length ``depth - 1``) from an int, a list or ``(r, inflection)``."""
    steps = depth - 1
    if isinstance(r, bool):
        raise ConfigError("r must be an int, a list of ints or (r, inflection), not a bool")
    if isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], float):
        base, inflect = r
        if not -1.0 <= inflect <= 1.0:
            raise ConfigError(f"r inflection {inflect} must lie in [-1, 1]")
        if steps == 0:
            return []
        lo = base * (1.0 - inflect)
        hi = 2 * base - lo
        step = (hi - lo) / max(steps - 1, 1)
        return [_check_count(round(lo + step * i)) for i in range(steps)]
    if isinstance(r, int):
        return [_check_count(r)] * steps
    if isinstance(r, (list, tuple)):
        vals = [_check_count(v) for v in r]
        if len(vals) > depth:
            raise ConfigError(
                f"the schedule has {len(vals)} entries but the model has only {depth} blocks; "
                f"give at most {depth} (one per block)"
            )
        if len(vals) == depth and vals[-1] != 0:
            raise ConfigError(
                "the schedule's last entry must be 0: nothing follows the last block, so there "
                f"is nothing to merge for; give at most {depth - 1} entries"
            )
        return (vals + [0] * steps)[:steps]
    raise ConfigError(f"r must be an int, a list of ints or (r, inflection), not {r!r}")


def _check_count(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"tokens to remove per block must be ints >= 0, got {v!r}")
    return v


def merge_slots(depth: int, every: int = 1) -> list[int]:
    """Steps that merge: after blocks ``every - 1, 2 every - 1, ...`` (before blocks ``every,
    2 every, ...``); the last step if none fits."""
    steps = depth - 1
    return list(range(every - 1, steps, every)) or [steps - 1]


def even_schedule(depth: int, total: int, every: int = 1) -> list[int]:
    """``total`` removals spread over the steps after every ``every``-th block, remainders first.

    ``every=2`` merges after blocks 1, 3, 5, ... only: half the merge steps (less overhead),
    each removing twice as many tokens.
    """
    steps = depth - 1
    if steps <= 0:
        return []
    slots = merge_slots(depth, every)
    base, extra = divmod(total, len(slots))
    out = [0] * steps
    for k, i in enumerate(slots):
        out[i] = base + (1 if k < extra else 0)
    return out


SHAPES = ("even", "geometric")


def geometric_schedule(depth: int, total: int, num_patches: int, every: int = 1) -> list[int]:
    """``total`` removals, each merge step keeping the same fraction of its patch tokens."""
    steps = depth - 1
    if steps <= 0:
        return []
    slots = merge_slots(depth, every)
    keep = (max(num_patches - total, 0) / num_patches) ** (1.0 / len(slots))
    out, left = [0] * steps, num_patches
    for k, i in enumerate(slots):
        after = round(num_patches * keep ** (k + 1)) if k < len(slots) - 1 else num_patches - total
        out[i] = left - after
        left = after
    return out


def check_shape(shape: str) -> str:
    if shape not in SHAPES:
        raise ConfigError(f"shape={shape!r} is unknown; choose one of {', '.join(SHAPES)}")
    return shape


def shaped_schedule(depth: int, total: int, num_patches: int, every: int = 1,
                    shape: str = "even") -> list[int]:
    """:func:`even_schedule` or :func:`geometric_schedule` by ``shape``."""
    if check_shape(shape) == "geometric":
        return geometric_schedule(depth, total, num_patches, every)
    return even_schedule(depth, total, every)


def check_ratio(ratio: float) -> float:
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < MAX_RATIO:
        raise ConfigError(
            f"ratio {ratio!r} is out of range: give the fraction of patch tokens to remove, "
            f"in [0, {MAX_RATIO})"
        )
    return float(ratio)


def from_flops(
    depth: int,
    num_patches: int,
    target: float,
    gmacs_of: Callable[[list[int]], float],
    feasible: Callable[[list[int]], bool],
    every: int = 1,
    shape: str = "even",
) -> list[int]:
    """The smallest schedule of ``shape`` whose cost is at most ``target`` x the dense cost."""
    if not isinstance(target, (int, float)) or not 0.0 < float(target) <= 1.0:
        raise ConfigError(
            f"flops {target!r} must be the fraction of dense GFLOPs to keep, in (0, 1]"
        )
    def make(total: int) -> list[int]:
        return shaped_schedule(depth, total, num_patches, every, shape)

    dense = gmacs_of([0] * (depth - 1))
    lo, hi = 0, int(num_patches * MAX_RATIO)
    if gmacs_of(make(hi)) > target * dense or not feasible(
        make(hi)
    ):
        # find the cheapest feasible schedule to tell the user what is reachable
        while hi > 0 and not feasible(make(hi)):
            hi -= 1
        best = gmacs_of(make(hi)) / dense
        if best > target:
            raise ConfigError(
                f"flops={target} is not reachable with this method and model: the most it can "
                f"remove keeps {best:.3f} of the dense GFLOPs; ask for flops >= {best:.3f}"
            )
    while lo < hi:  # smallest total removal meeting the target (cost falls as removal grows)
        mid = (lo + hi) // 2
        if gmacs_of(make(mid)) <= target * dense:
            hi = mid
        else:
            lo = mid + 1
    return make(lo)


# -- the literature's reduction ratio, presets and schedule files ---------------------------

# Named schedules of the peers. "even-blocks": AMVim and R-MeeTo-style runs merge r tokens
# before every even-indexed block, 12 steps on a 24-block model: before block 0 (``pre``, on
# the embeddings) and after blocks 1, 3, ..., 21, the same r at each step.
PRESETS: tuple[str, ...] = ("even-blocks",)
SCHEDULE_FORMAT = "vimstm-schedule"


def even_blocks(depth: int, r: int) -> tuple[int, list[int]]:
    """``(pre, schedule)`` removing ``r`` tokens before blocks 0, 2, 4, ... (the peers')."""
    return r, [r if i % 2 == 1 else 0 for i in range(depth - 1)]


def tokens_removed_per_block(schedule: Sequence[int], depth: int, pre: int = 0) -> list[int]:
    """Patch tokens removed before each block runs (block k sees ``M - removed[k]`` patches)."""
    out, gone = [], pre
    for k in range(depth):
        out.append(gone)
        gone += schedule[k] if k < len(schedule) else 0
    return out


def mean_token_reduction(schedule: Sequence[int], depth: int, num_patches: int,
                         pre: int = 0) -> float:
    """The peers' "reduction ratio": mean over the blocks of the share of patch tokens removed
    before the block runs.

    With 196 patches, 24 blocks and ``r`` tokens before each of blocks 0, 2, ..., 22 this is
    ``6.5 r / 196``: r = 5 / 8 / 11 / 14 give 0.17 / 0.27 / 0.36 / 0.46 (AMVim's tables);
    R-MeeTo's 11 steps (before blocks 2, ..., 22) give ``5.5 r / 196``: 0.14 for r = 5 and
    0.31 for r = 11, as its README states. vimstm's ``ratio`` is the share gone by the last
    block instead.
    """
    if depth < 1 or num_patches < 1:
        return 0.0
    return sum(tokens_removed_per_block(schedule, depth, pre)) / (depth * num_patches)


def check_reduction(reduction: float) -> float:
    if (isinstance(reduction, bool) or not isinstance(reduction, (int, float))
            or not 0.0 <= float(reduction) < MAX_RATIO):
        raise ConfigError(
            f"reduction {reduction!r} is out of range: give the mean share of patch tokens "
            f"removed per block (the papers' reduction ratio, e.g. 0.17), in [0, {MAX_RATIO})"
        )
    return float(reduction)


def from_reduction(
    depth: int,
    num_patches: int,
    target: float,
    every: int = 1,
    shape: str = "even",
) -> list[int]:
    """The schedule of ``shape`` whose :func:`mean_token_reduction` is nearest ``target``.

    Ties go to the smaller schedule; a target the merge steps cannot reach is an error.
    """
    check_reduction(target)
    if depth < 2:
        raise ConfigError("a model of one block has no merge step; reduction needs depth >= 2")
    hi = int(num_patches * MAX_RATIO)
    return _nearest(
        target, num_patches, hi,
        lambda total: shaped_schedule(depth, total, num_patches, every, shape),
        lambda s: mean_token_reduction(s, depth, num_patches),
        "merge earlier or more often, e.g. schedule='even-blocks' or every=1",
    )


def even_blocks_r(depth: int, num_patches: int, target: float) -> int:
    """The ``r`` of the even-blocks preset whose mean token reduction is nearest ``target``."""
    check_reduction(target)
    n_steps = 1 + (depth - 1) // 2
    hi = int(num_patches * MAX_RATIO) // n_steps

    def red(r: int) -> float:
        pre, s = even_blocks(depth, r)
        return mean_token_reduction(s, depth, num_patches, pre)

    return _nearest(target, num_patches, hi, lambda r: r, red, "lower the reduction")


def _nearest(target: float, num_patches: int, hi: int, make: Callable[[int], Any],
             value: Callable[[Any], float], fix: str) -> Any:
    best, best_err, reach = make(0), float("inf"), 0.0
    for n in range(hi + 1):
        cand = make(n)
        v = value(cand)
        reach = max(reach, v)
        if abs(v - target) < best_err - 1e-12:
            best, best_err = cand, abs(v - target)
        if v > target:
            break
    if target - reach > 0.5 / num_patches:
        raise ConfigError(f"reduction={target} is not reachable with these merge steps (at most "
                          f"{reach:.3f}); {fix}")
    return best


def check_preset(name: str) -> str:
    if name not in PRESETS:
        raise ConfigError(
            f"schedule={name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing "
            "schedule file (.json, written by `vimstm calibrate`)"
        )
    return name


def load_schedule_file(source: Any, depth: int, num_patches: int) -> dict[str, Any]:
    """A schedule file (path, or its parsed dict) checked against a model's depth and patches."""
    import json
    from pathlib import Path

    where = "the schedule"
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        where = f"schedule file {path}"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{where} does not exist; give a file written by `vimstm "
                              f"calibrate` or a preset ({', '.join(PRESETS)})") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{where} is not readable JSON ({e}); write it again with "
                              "`vimstm calibrate`") from None
    if not isinstance(data, dict) or data.get("format") != SCHEDULE_FORMAT:
        raise ConfigError(f"{where} is not a vimstm schedule (no \"format\": "
                          f"\"{SCHEDULE_FORMAT}\"); write it with `vimstm calibrate`")
    if data.get("depth") != depth:
        raise ConfigError(
            f"{where} was made for a {data.get('depth')}-block model but this model has {depth} "
            "blocks; calibrate a schedule for this model (vimstm calibrate --model ...)"
        )
    if data.get("num_patches") not in (None, num_patches):
        raise ConfigError(
            f"{where} was made for {data.get('num_patches')} patch tokens but this model has "
            f"{num_patches} (another image size?); calibrate a schedule at this image size"
        )
    steps = data.get("schedule")
    if not isinstance(steps, list):
        raise ConfigError(f"{where} has no \"schedule\" list of tokens removed per block")
    data = dict(data)
    data["schedule"] = parse_r(depth, [_check_count(v) for v in steps])
    data["pre"] = _check_count(data.get("pre", 0))
    return data


def schedule_document(schedule: Sequence[int], depth: int, num_patches: int, pre: int = 0,
                      **meta: Any) -> dict[str, Any]:
    """The JSON object of a schedule file (see :func:`load_schedule_file`): ``schedule[i]``
    tokens are removed after block i, ``pre`` before block 0."""
    sched = list(schedule)
    return {
        "format": SCHEDULE_FORMAT, "version": 1, "depth": depth, "num_patches": num_patches,
        "pre": pre, "schedule": sched,
        "mean_token_reduction": mean_token_reduction(sched, depth, num_patches, pre),
        "ratio": (pre + sum(sched)) / num_patches,
        **meta,
    }

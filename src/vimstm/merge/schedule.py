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


def even_schedule(depth: int, total: int, every: int = 1) -> list[int]:
    """``total`` removals spread over the steps after every ``every``-th block, remainders first.

    ``every=2`` merges after blocks 1, 3, 5, ... only: half the merge steps (less overhead),
    each removing twice as many tokens.
    """
    steps = depth - 1
    if steps <= 0:
        return []
    slots = [i for i in range(steps) if (i + 1) % every == 0] or [steps - 1]
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
    slots = [i for i in range(steps) if (i + 1) % every == 0] or [steps - 1]
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

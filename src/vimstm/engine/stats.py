"""Paired statistics of two classifiers on the same images: is a top-1 difference real?

Both take per-image correctness vectors (bool, one entry per image, the same images in the
same order) of a model ``a`` and a model ``b``:

* :func:`paired_bootstrap`: the difference in top-1 (``a - b``, percentage points) with a
  percentile interval from resampling the images with replacement. Per image the difference
  is +1, 0 or -1, so a resample is fully described by how many +1 and -1 images it drew; the
  draws come from a counter-based SplitMix64 stream in integer arithmetic, so the interval
  depends only on the image count, the two discordant counts, ``resamples`` and ``seed``: the
  same on every machine and NumPy version (NumPy's own samplers are not: its binomial, and
  with it ``Generator.multinomial``, changed its stream in NumPy 2.5).
* :func:`mcnemar`: McNemar's test on the discordant images (``a`` right and ``b`` wrong, and
  the reverse): the exact two-sided binomial p-value and the chi-square one with continuity
  correction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vimstm.errors import ConfigError


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool).ravel(), np.asarray(b, dtype=bool).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ConfigError(f"paired statistics need two non-empty correctness vectors over the "
                          f"same images; got {a.size} and {b.size} entries")
    return a, b


def discordant(a: Any, b: Any) -> tuple[int, int]:
    """(images ``a`` gets right and ``b`` wrong, images ``b`` gets right and ``a`` wrong)."""
    a, b = _pair(a, b)
    return int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))


_GAMMA, _MIX1, _MIX2 = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9),
                        np.uint64(0x94D049BB133111EB))


def splitmix64(seed: int, start: int, count: int) -> np.ndarray:
    """Outputs ``start .. start + count - 1`` of the SplitMix64 stream seeded with ``seed``
    (uint64; wrapping integer arithmetic only, so every platform gets the same numbers)."""
    z = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    z *= _GAMMA
    z += np.uint64(seed % 2**64)
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def paired_bootstrap(a: Any, b: Any, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Top-1 difference ``a - b`` in points and its bootstrap percentile interval.

    Returns ``diff``, ``lo``, ``hi`` (the ``level`` interval) and ``se`` (the bootstrap
    standard deviation), all in percentage points. Resample ``r`` draws image
    ``floor(u * n / 2**64)`` for each of its ``n`` SplitMix64 outputs ``u``; with the +1 images
    first and the -1 images next (the order does not change the distribution), only two
    integer comparisons per draw are needed.
    """
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ConfigError(f"resamples={resamples} must be >= 1 and level={level} in (0, 1)")
    a, b = _pair(a, b)
    n = a.size
    plus, minus = discordant(a, b)
    # u < t1: a +1 image; t1 <= u < t2: a -1 image (t = ceil(k * 2**64 / n), exact integers)
    t1, t2 = -(-(plus << 64) // n), -(-((plus + minus) << 64) // n)
    k_plus, k_disc = np.zeros(resamples, np.int64), np.zeros(resamples, np.int64)
    chunk = max(1, (1 << 21) // n)  # resamples per block: about 16 MB of draws
    for r0 in range(0, resamples if plus + minus else 0, chunk):
        c = min(chunk, resamples - r0)
        u = splitmix64(seed, r0 * n, c * n).reshape(c, n)
        for k, t in ((k_plus, t1), (k_disc, t2)):
            k[r0:r0 + c] = n if t >= 2**64 else np.count_nonzero(u < np.uint64(t), axis=1)
    diffs = 100.0 * (2 * k_plus - k_disc) / n
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(diffs, [tail, 100.0 - tail])
    return {"diff": 100.0 * (plus - minus) / n, "lo": float(lo), "hi": float(hi),
            "se": float(diffs.std(ddof=1)) if resamples > 1 else 0.0}


def mcnemar(a: Any, b: Any) -> dict[str, float | int]:
    """McNemar's test: ``b01`` (a right, b wrong), ``b10`` (the reverse), the exact two-sided
    binomial ``p_exact`` and the continuity-corrected chi-square ``p_chi2`` (1 if no image is
    discordant)."""
    n01, n10 = discordant(a, b)
    k, n = min(n01, n10), n01 + n10
    if n == 0:
        return {"b01": n01, "b10": n10, "p_exact": 1.0, "p_chi2": 1.0}
    # P(X <= k), X ~ Binomial(n, 1/2), summed in log space (n can be thousands)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
            for i in range(k + 1)]
    top = max(logs)
    cdf = math.exp(top) * sum(math.exp(v - top) for v in logs)
    stat = (abs(n01 - n10) - 1) ** 2 / n
    return {"b01": n01, "b10": n10, "p_exact": min(1.0, 2.0 * cdf),
            "p_chi2": math.erfc(math.sqrt(stat / 2.0))}


def compare(a: Any, b: Any, resamples: int = 2000, seed: int = 0,
            level: float = 0.95) -> dict[str, Any]:
    """:func:`paired_bootstrap` and :func:`mcnemar` in one dict, plus ``distinct``: whether
    the interval excludes 0 (the images can tell the two models apart)."""
    boot = paired_bootstrap(a, b, resamples, seed, level)
    return {**boot, **mcnemar(a, b), "distinct": bool(boot["lo"] > 0 or boot["hi"] < 0)}

"""Paired statistics of two classifiers on the same images: is a top-1 difference real?

Both take per-image correctness vectors (bool, one entry per image, the same images in the
same order) of a model ``a`` and a model ``b``:

* :func:`paired_bootstrap`: the difference in top-1 (``a - b``, percentage points) with a
  percentile interval from resampling the images with replacement. Per image the difference
  is +1, 0 or -1, so a resample is fully described by how many +1 and -1 images it drew: the
  resampled counts are drawn from the multinomial of the observed shares, which is exactly the
  bootstrap over images and costs no (resamples x images) index array.
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


def paired_bootstrap(a: Any, b: Any, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Top-1 difference ``a - b`` in points and its bootstrap percentile interval.

    Returns ``diff``, ``lo``, ``hi`` (the ``level`` interval) and ``se`` (the bootstrap
    standard deviation), all in percentage points.
    """
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ConfigError(f"resamples={resamples} must be >= 1 and level={level} in (0, 1)")
    a, b = _pair(a, b)
    n = a.size
    plus, minus = discordant(a, b)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [plus / n, minus / n, (n - plus - minus) / n], size=resamples)
    diffs = 100.0 * (counts[:, 0] - counts[:, 1]) / n
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

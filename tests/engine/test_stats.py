"""Paired statistics (vimstm.engine.stats) against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vimstm.engine.stats import compare, discordant, mcnemar, paired_bootstrap, splitmix64
from vimstm.errors import ConfigError


def _vectors(n: int, plus: int, minus: int, both: int) -> tuple[np.ndarray, np.ndarray]:
    """a right/b wrong on ``plus`` images, the reverse on ``minus``, both right on ``both``."""
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:plus] = True
    b[plus:plus + minus] = True
    a[plus + minus:plus + minus + both] = b[plus + minus:plus + minus + both] = True
    perm = np.random.default_rng(1).permutation(n)
    return a[perm], b[perm]


def test_identical_models_differ_by_nothing():
    a, _ = _vectors(500, 40, 0, 300)
    r = compare(a, a)
    assert (r["diff"], r["lo"], r["hi"], r["b01"], r["b10"]) == (0.0, 0.0, 0.0, 0, 0)
    assert r["p_exact"] == 1.0 and r["p_chi2"] == 1.0 and not r["distinct"]


def test_mcnemar_known_values():
    a, b = _vectors(100, 10, 0, 50)
    r = mcnemar(a, b)
    assert (r["b01"], r["b10"]) == (10, 0)
    assert r["p_exact"] == pytest.approx(2 * 0.5**10)  # 0.00195
    assert r["p_chi2"] == pytest.approx(math.erfc(math.sqrt(8.1 / 2)))  # (10-1)^2/10 = 8.1
    # symmetric, and 7 vs 3 of 10 discordant: 2 * P(X <= 3 | n=10) = 0.34375
    a, b = _vectors(100, 7, 3, 50)
    assert mcnemar(a, b)["p_exact"] == pytest.approx(0.34375)
    assert mcnemar(b, a)["p_exact"] == pytest.approx(0.34375)
    # large counts stay finite (log-space sum): 4,000 discordant images, a fair split
    a, b = _vectors(8000, 2000, 2000, 3000)
    assert mcnemar(a, b)["p_exact"] == pytest.approx(1.0)


def test_bootstrap_matches_the_normal_approximation_and_index_resampling():
    n, plus, minus = 8000, 400, 250  # a is 1.875 points better
    a, b = _vectors(n, plus, minus, 4000)
    assert discordant(a, b) == (plus, minus)
    r = paired_bootstrap(a, b, resamples=4000, seed=0)
    assert r["diff"] == pytest.approx(100 * (plus - minus) / n)
    # the paired difference's standard error: sqrt((p+ + p- - (p+ - p-)^2) / n)
    p1, p2 = plus / n, minus / n
    se = 100 * math.sqrt((p1 + p2 - (p1 - p2) ** 2) / n)
    assert r["se"] == pytest.approx(se, rel=0.05)
    assert r["lo"] == pytest.approx(r["diff"] - 1.96 * se, abs=0.06)
    assert r["hi"] == pytest.approx(r["diff"] + 1.96 * se, abs=0.06)
    # the same interval as the textbook bootstrap (resampling image indices)
    idx = np.random.default_rng(5).integers(0, n, size=(2000, n))
    d = 100 * (a[idx].mean(1) - b[idx].mean(1))
    lo, hi = np.percentile(d, [2.5, 97.5])
    assert r["lo"] == pytest.approx(lo, abs=0.08) and r["hi"] == pytest.approx(hi, abs=0.08)
    assert compare(a, b)["distinct"] and compare(b, a)["diff"] == -r["diff"]
    # fixed seed: the same interval every time
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)


def test_a_small_difference_is_not_distinct():
    a, b = _vectors(8000, 30, 25, 5000)
    r = compare(a, b)
    assert r["lo"] < 0 < r["hi"] and not r["distinct"] and r["p_exact"] > 0.5


def test_mismatched_vectors_are_refused():
    with pytest.raises(ConfigError, match="same images"):
        compare(np.ones(3, bool), np.ones(4, bool))


def test_splitmix64_matches_the_reference_generator():
    """The published SplitMix64 outputs (Steele, Lea and Flood's generator as in the xoshiro
    reference code), seeds 0 and 1234567."""
    assert [int(v) for v in splitmix64(0, 0, 2)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]
    assert [int(v) for v in splitmix64(1234567, 0, 2)] == [6457827717110365317,
                                                           3203168211198807973]
    assert np.array_equal(splitmix64(7, 5, 3), splitmix64(7, 0, 8)[5:])  # counter-based


def test_bootstrap_depends_only_on_the_counts():
    """The same discordant counts give the same interval whatever the images' order, the other
    rows compared before, or the machine: the stream is integer arithmetic on a counter, not
    NumPy's samplers (whose multinomial changed between NumPy 2.4 and 2.5)."""
    a, b = _vectors(8000, 121, 193, 5000)
    r = paired_bootstrap(a, b, resamples=2000, seed=0)
    perm = np.random.default_rng(2).permutation(a.size)
    assert paired_bootstrap(a[perm], b[perm], resamples=2000, seed=0) == r
    paired_bootstrap(*_vectors(500, 40, 7, 300), seed=0)  # another comparison in between
    a2, b2 = _vectors(8000, 121, 193, 100)  # other concordant images, same counts
    assert paired_bootstrap(a2, b2, resamples=2000, seed=0) == r
    # this interval was computed on NumPy 2.4.6 (x86-64); any NumPy or machine must agree
    assert (r["diff"], r["lo"], r["hi"]) == (-0.9, -1.35, -0.475)
    assert paired_bootstrap(a, b, resamples=2000, seed=1) != r

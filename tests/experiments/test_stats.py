"""Paired differences and the exact McNemar test against scipy and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from granularity.utils.stats import mcnemar_exact, paired_difference


def test_paired_difference_matches_scipy_and_hand():
    a = np.array([0.12, 0.15, 0.11, 0.18, 0.16, 0.13])
    b = np.array([0.10, 0.16, 0.08, 0.14, 0.15, 0.12])
    r = paired_difference(a, b, n_boot=20000, seed=1)
    d = a - b
    half = stats.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert r["mean"] == pytest.approx(d.mean()) and r["ci"] == pytest.approx(half)
    assert (r["t_lo"], r["t_hi"]) == pytest.approx((d.mean() - half, d.mean() + half))
    tt = stats.ttest_rel(a, b)
    assert r["p_t"] == pytest.approx(tt.pvalue)
    lo, hi = tt.confidence_interval(0.95)
    assert (r["t_lo"], r["t_hi"]) == pytest.approx((lo, hi))
    # percentile bootstrap: against scipy's own (different draws, so a tolerance of a few 1e-3)
    sb = stats.bootstrap((d,), np.mean, method="percentile", n_resamples=20000, random_state=np.random.default_rng(0))
    assert r["boot_lo"] == pytest.approx(sb.confidence_interval.low, abs=3e-3)
    assert r["boot_hi"] == pytest.approx(sb.confidence_interval.high, abs=3e-3)
    assert r["boot_lo"] < r["mean"] < r["boot_hi"]


def test_paired_difference_order_invariant_and_nan_pairs_dropped():
    a, b = np.array([1.0, 2.0, np.nan, 4.0]), np.array([0.5, 1.0, 3.0, 3.0])
    r = paired_difference(a, b)
    assert r["n"] == 3 and r["mean"] == pytest.approx(np.mean([0.5, 1.0, 1.0]))
    p = [3, 0, 1]
    r2 = paired_difference(a[[3, 0, 1]], b[[3, 0, 1]])
    assert r2["mean"] == pytest.approx(r["mean"]) and r2["p_t"] == pytest.approx(r["p_t"]) and p
    one = paired_difference([1.0], [0.0])
    assert one["mean"] == 1.0 and math.isnan(one["ci"]) and math.isnan(one["p_t"])
    with pytest.raises(ValueError, match="one shape"):
        paired_difference([1, 2], [1])


def test_mcnemar_exact_by_hand():
    # b = 1 (a right, b wrong), c = 9: p = 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11 / 1024
    a = np.array([1] * 1 + [0] * 9 + [1] * 20 + [0] * 5, dtype=bool)
    b = np.array([0] * 1 + [1] * 9 + [1] * 20 + [0] * 5, dtype=bool)
    r = mcnemar_exact(a, b)
    assert (r["a_only"], r["b_only"], r["n"]) == (1, 9, 35)
    assert r["p"] == pytest.approx(22 / 1024)
    assert mcnemar_exact(b, a)["p"] == pytest.approx(r["p"])  # symmetric
    assert mcnemar_exact(a, a)["p"] == 1.0  # no discordant pairs

"""Paired differences, the hierarchical bootstrap, Holm's adjustment and the exact McNemar test
against scipy and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from granularity.utils.stats import MIN_BOOT_SEEDS, hierarchical_bootstrap, holm, mcnemar_exact, paired_difference


def test_paired_difference_matches_scipy_and_hand():
    a = np.array([0.12, 0.15, 0.11, 0.18, 0.16, 0.13, 0.14, 0.17, 0.12, 0.19])
    b = np.array([0.10, 0.16, 0.08, 0.14, 0.15, 0.12, 0.15, 0.13, 0.11, 0.16])
    r = paired_difference(a, b, n_boot=20000, seed=1)
    d = a - b
    half = stats.t.ppf(0.975, 9) * d.std(ddof=1) / math.sqrt(10)
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


def test_no_seed_bootstrap_below_ten_seeds():
    a, b = np.array([0.12, 0.15, 0.11]), np.array([0.10, 0.16, 0.08])
    r = paired_difference(a, b)
    assert MIN_BOOT_SEEDS == 10 and math.isnan(r["boot_lo"]) and math.isnan(r["boot_hi"])
    assert r["p_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue)  # the seed-level test stays


def _slow_hierarchical(counts, n_boot, seed):
    """The same two-stage resampling written as explicit loops over per-image outcomes."""
    rng = np.random.default_rng(seed)
    per_seed = []
    for a_only, b_only, n in counts:  # per image: +1 only b right (a's error higher), -1 only a right
        per_seed.append(np.array([-1] * a_only + [1] * b_only + [0] * (n - a_only - b_only)))
    boots = []
    for _ in range(n_boot):
        seeds = rng.integers(0, len(counts), len(counts))
        boots.append(np.mean([rng.choice(per_seed[s], len(per_seed[s])).mean() for s in seeds]))
    return np.quantile(boots, [0.025, 0.975])


def test_hierarchical_bootstrap_against_a_loop_and_its_limits():
    counts = [(12, 30, 200), (20, 18, 200), (5, 25, 200), (15, 22, 200)]
    r = hierarchical_bootstrap(counts, n_boot=4000, seed=3)
    assert r["mean"] == pytest.approx(np.mean([(b - a) / n for a, b, n in counts])) and r["n"] == 4
    lo, hi = _slow_hierarchical(counts, 4000, 11)  # other draws: agreement within Monte-Carlo error
    assert r["lo"] == pytest.approx(lo, abs=0.006) and r["hi"] == pytest.approx(hi, abs=0.006)
    # wider than resampling the seeds alone (image noise is added), and one seed gives no interval
    seed_only = paired_difference([(b - a) / n for a, b, n in counts], [0.0] * 4)
    assert r["hi"] - r["lo"] > 0 and math.isnan(hierarchical_bootstrap(counts[:1])["lo"])
    assert not math.isnan(seed_only["t_lo"])
    # identical seeds with no discordant images: a zero-width interval at 0
    z = hierarchical_bootstrap([(0, 0, 50)] * 3)
    assert (z["lo"], z["hi"], z["mean"]) == (0.0, 0.0, 0.0)


def test_holm_by_hand():
    # p sorted: 0.01 (x4) = 0.04, 0.02 (x3) = 0.06, 0.03 (x2) = 0.06 (monotone), 0.5 (x1) = 0.5
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.4, 0.6]) == pytest.approx([0.8, 0.8])  # cumulative max, capped at 1 below
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, float("nan"), 0.04])  # NaN is not a member of the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([]) == []

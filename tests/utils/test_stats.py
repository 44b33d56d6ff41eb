"""``mean_ci`` / ``fmt_ci``: against scipy's t interval, a hand computation, and coverage."""

import math

import numpy as np
import pytest
from scipy import stats

from granularity.utils.stats import fmt_ci, mean_ci


def test_mean_ci_by_hand():
    # [1, 2, 3, 4]: mean 2.5, sample std sqrt(5/3), t(0.975, df=3) = 3.182446305284263 (tables)
    s = mean_ci([1, 2, 3, 4])
    assert s["n"] == 4 and s["mean"] == 2.5
    assert s["std"] == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    assert s["ci"] == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2, rel=1e-12)  # 2.0542...


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("values", [[0.1, 0.4, 0.35], [3.0, -1.0, 2.5, 7.25, 0.0, 1.0], [0.5, 0.5]])
def test_mean_ci_matches_scipy_t_interval(values, level):
    lo, hi = stats.t.interval(level, df=len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    s = mean_ci(values, level=level)
    if hi == lo or math.isnan(hi):  # no spread: scipy gives nan for a zero scale
        assert s["ci"] == 0.0
    else:
        assert s["ci"] == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert s["mean"] == pytest.approx(np.mean(values), rel=1e-15)


def test_mean_ci_drops_missing_and_has_no_interval_for_one_value():
    assert mean_ci([2.0, None, float("nan"), 4.0]) == mean_ci([2.0, 4.0])
    one = mean_ci([0.3])
    assert one["mean"] == 0.3 and one["n"] == 1 and math.isnan(one["ci"])
    none = mean_ci([])
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["ci"])


def test_mean_ci_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, n = 4000, 5
    hits = sum(abs(mean_ci(x)["mean"] - 1.0) <= mean_ci(x)["ci"] for x in rng.normal(1.0, 2.0, (trials, n)))
    # binomial sd of the rate at 4000 trials: sqrt(.95 * .05 / 4000) = 0.0034; 4 sd margin
    assert abs(hits / trials - 0.95) < 0.014


def test_fmt_ci():
    assert fmt_ci({"mean": 0.12345, "ci": 0.0456}) == "0.123 ± 0.046"
    assert fmt_ci({"mean": 0.12345, "ci": float("nan")}) == "0.123"
    assert fmt_ci({"mean": 0.12345}) == "0.123"
    assert fmt_ci({"mean": 2.0, "ci": 0.25}, digits=1) == "2.0 ± 0.2"  # round half to even, as format does
    assert fmt_ci(mean_ci([1, 2, 3, 4]), digits=2) == "2.50 ± 2.05"

"""Mean and confidence intervals over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and half-width of the Student-t ``level`` confidence interval of the mean.

    With one value the half-width is ``nan`` (no spread can be estimated).
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return {"mean": float("nan"), "ci": float("nan"), "std": float("nan"), "n": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "ci": float("nan"), "std": float("nan"), "n": 1}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1) * std / math.sqrt(n))
    return {"mean": mean, "ci": half, "std": std, "n": n}


def fmt_ci(summary: dict[str, float], digits: int = 3) -> str:
    if math.isnan(summary.get("ci", float("nan"))):
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {summary['ci']:.{digits}f}"


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95, n_boot: int = 10000,
                      seed: int = 0) -> dict[str, float]:
    """Paired difference ``a - b`` over units paired by seed (same init, data and cue draw).

    Returns the mean difference, the Student-t ``level`` CI (``t_lo``, ``t_hi``, half-width
    ``ci``), the two-sided paired t-test p-value (``p_t``; ``scipy.stats.ttest_rel``), and a
    percentile bootstrap CI of the mean difference (``boot_lo``, ``boot_hi``; ``n_boot``
    resamples of the seeds from a generator seeded with ``seed``). Pairs with a NaN are dropped.
    With fewer than 2 pairs the intervals and p-value are NaN.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs arrays of one shape; got {a.shape} and {b.shape}.")
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    n = int(d.size)
    nan = float("nan")
    out = {"mean": float(d.mean()) if n else nan, "n": n, "ci": nan, "t_lo": nan, "t_hi": nan, "p_t": nan,
           "boot_lo": nan, "boot_hi": nan, "std": nan}
    if n < 2:
        return out
    s = mean_ci(d, level)
    out.update(ci=s["ci"], std=s["std"], t_lo=s["mean"] - s["ci"], t_hi=s["mean"] + s["ci"])
    out["p_t"] = float(stats.ttest_1samp(d, 0.0).pvalue) if s["std"] > 0 else (1.0 if s["mean"] == 0 else 0.0)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    out["boot_lo"], out["boot_hi"] = (float(v) for v in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    return out


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float]:
    """Exact (binomial) McNemar test on paired per-item outcomes.

    ``b`` = items ``a`` gets right and ``b`` wrong, ``c`` = the reverse; under the null each
    discordant item is a fair coin, so ``p = binomtest(b, b + c, 0.5)`` (two-sided). Pooling
    items over seeds treats (seed, image) pairs as independent, which they are not fully (the
    same test image recurs): read it beside the per-seed paired CI, not instead of it.
    """
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape:
        raise ValueError(f"mcnemar_exact needs arrays of one shape; got {ca.shape} and {cb.shape}.")
    b = int(np.sum(ca & ~cb))
    c = int(np.sum(~ca & cb))
    p = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"a_only": b, "b_only": c, "n": int(ca.size), "p": p}


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"

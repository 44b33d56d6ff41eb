"""Mean and confidence intervals over seeds; paired seed-level tests first, image-level ones as
secondary, conditional figures; Holm's adjustment for the secondary ones."""

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


#: A percentile bootstrap over seeds is shown only from this many seeds on (over 3 values it is
#: narrower than the t interval for no good reason); below it, NaN (or the hierarchical one).
MIN_BOOT_SEEDS = 10


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95, n_boot: int = 10000,
                      seed: int = 0) -> dict[str, float]:
    """Paired difference ``a - b`` over units paired by seed (same init, data and cue draw).

    Returns the mean difference, the Student-t ``level`` CI (``t_lo``, ``t_hi``, half-width
    ``ci``), the two-sided paired t-test p-value (``p_t``; ``scipy.stats.ttest_rel``), and, with
    at least :data:`MIN_BOOT_SEEDS` pairs, a percentile bootstrap CI of the mean difference
    (``boot_lo``, ``boot_hi``; ``n_boot`` resamples of the seeds from a generator seeded with
    ``seed``; NaN below). Pairs with a NaN are dropped. With fewer than 2 pairs the intervals and
    p-value are NaN.
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
    if n < MIN_BOOT_SEEDS:
        return out
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    out["boot_lo"], out["boot_hi"] = (float(v) for v in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    return out


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float]:
    """Exact (binomial) McNemar test on paired per-item outcomes.

    ``b`` = items ``a`` gets right and ``b`` wrong, ``c`` = the reverse; under the null each
    discordant item is a fair coin, so ``p = binomtest(b, b + c, 0.5)`` (two-sided). Pooling
    items over seeds treats (seed, image) pairs as independent, which they are not fully (the
    same test image recurs) and the trained models as fixed: it is conditional on these models and
    says nothing about another seed. A secondary figure, never the headline: the seed-level test
    is :func:`paired_difference` (or :func:`hierarchical_bootstrap`).
    """
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape:
        raise ValueError(f"mcnemar_exact needs arrays of one shape; got {ca.shape} and {cb.shape}.")
    b = int(np.sum(ca & ~cb))
    c = int(np.sum(~ca & cb))
    p = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"a_only": b, "b_only": c, "n": int(ca.size), "p": p}


def hierarchical_bootstrap(counts: Sequence[Sequence[int]], level: float = 0.95, n_boot: int = 10000,
                           seed: int = 0) -> dict[str, float]:
    """Two-stage bootstrap CI of a paired difference of error rates, ``err_a - err_b``: resample
    the seeds, then the images within each drawn seed.

    ``counts[s] = (a_only, b_only, n)`` of seed ``s``: images only ``a`` gets right, only ``b``
    gets right, and all images (as :func:`mcnemar_exact` counts them), so seed ``s``'s
    difference is ``(b_only - a_only) / n``. Each resample draws seeds with replacement, then
    each drawn seed's ``n`` images with replacement (a multinomial over the three kinds of image),
    and averages the seeds' differences; the CI is the percentile interval of ``n_boot``
    resamples (generator seeded with ``seed``). Returns ``mean``, ``lo``, ``hi``, ``n`` (seeds).
    """
    c = np.asarray(counts, dtype=np.int64).reshape(-1, 3)  # (S, 3): a_only, b_only, n
    n_seeds = len(c)
    nan = float("nan")
    mean = float(np.mean((c[:, 1] - c[:, 0]) / c[:, 2])) if n_seeds else nan
    if n_seeds < 2:
        return {"mean": mean, "lo": nan, "hi": nan, "n": n_seeds}
    rng = np.random.default_rng(seed)
    pick = c[rng.integers(0, n_seeds, size=(n_boot, n_seeds))]  # (B, S, 3): the drawn seeds
    probs = np.stack([pick[..., 0], pick[..., 1], pick[..., 2] - pick[..., 0] - pick[..., 1]], axis=-1) / pick[..., 2:3]
    draws = rng.multinomial(pick[..., 2], probs)  # (B, S, 3): images redrawn within each seed
    boot = ((draws[..., 1] - draws[..., 0]) / pick[..., 2]).mean(axis=1)  # (B,)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": n_seeds}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order; NaN stays NaN and does
    not count in the family. ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` over the
    ascending p-values."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(~np.isnan(p))
    out = np.full(p.shape, np.nan)
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order])) if m else np.array([])
    out[order] = adj
    return [float(v) for v in out]


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"

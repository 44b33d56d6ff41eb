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

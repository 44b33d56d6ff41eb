"""The advisor's race and decision: pure functions of the finished runs' figures (no training).

**Racing** (successive elimination with family-wise error control). Every candidate gets
``min_seeds`` seeds, then the candidates still in contention ``seeds_per_round`` more per
round, up to ``max_seeds``; the looks (seed counts) are therefore fixed before any run. The
default rule, ``holm-spending``, spends ``alpha`` over the looks by the linear spending function
``alpha(t) = alpha * t`` of the information fraction ``t = seeds / max_seeds`` (Lan & DeMets
1983; Kim & DeMets 1987) and, at each look, runs Holm's step-down procedure (Holm 1979) at that
look's share over every one-sided paired t-test "candidate ``c`` has a higher validation error
than candidate ``d``" between alive candidates. A candidate is dropped when one of its tests is
rejected. By Bonferroni's inequality over the looks and Holm's guarantee within each, the chance
that any co-best candidate is ever dropped is at most ``alpha`` whatever the dependence between
the tests (conservative: the correlation of successive looks is not used). The older rule,
``unadjusted`` (every contender against the current leader, an unadjusted two-sided ``1 - alpha``
t interval at every look), is kept to replay old folders; it drops co-best candidates several
times more often than ``alpha`` (tests/experiments/test_advise_racing_sim.py).

**Confirmation on fresh seeds.** The validation leader and the target baseline are trained again
on ``confirm_seeds`` seeds the race never saw (``first_seed + max_seeds`` onwards) and compared
once on the test split, paired by those seeds: the leader is recommended only when the one-sided
paired t-test at ``confirm_alpha`` rejects "no better than the target" (equivalently, the upper
bound of the two-sided ``1 - 2 confirm_alpha`` t interval lies below 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats

from granularity.utils.stats import mean_ci

BASELINE = "target"

#: What the race selects on and the advice reports: ``error`` is the target error on the images
#: as the data set gives them; ``hard`` / ``easy`` the target error on the cue-free / cued
#: versions of the same images, where the data defines them (a planted cue: ``cue`` data option).
METRICS = {
    "error": "target error",
    "hard": "target error on the cue-free (hard) images",
    "easy": "target error on the cued (easy) images",
}

#: The drop rules :func:`replay` knows (``AdviseConfig.drop_rule``).
DROP_RULES = ("holm-spending", "unadjusted")


@dataclass
class Race:
    """State of the successive-elimination race after replaying the finished results."""

    candidates: list[str]
    alive: list[str]
    seeds: dict[str, list[int]]  # seeds each candidate has been scheduled (all finished)
    eliminated: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> round, reason
    rounds: list[dict[str, Any]] = field(default_factory=list)
    comparisons: int = 0  # paired tests made on the validation split
    next_runs: list[tuple[str, int]] = field(default_factory=list)  # what the next round needs
    finished: bool = False  # nothing left to do within max_seeds
    best: str | None = None


def _paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def ci_of_difference(diffs: list[float], level: float) -> tuple[float, float, float]:
    """Mean and the Student-t ``level`` CI of paired differences: ``(mean, lo, hi)``."""
    s = mean_ci(diffs, level)
    half = s["ci"] if not math.isnan(s["ci"]) else float("inf")
    return s["mean"], s["mean"] - half, s["mean"] + half


def looks(cfg: Any) -> list[int]:
    """The seed counts at which the race looks: ``min_seeds``, then ``+ seeds_per_round`` up to
    ``max_seeds`` (fixed before any run)."""
    out = [cfg.min_seeds]
    while out[-1] < cfg.max_seeds:
        out.append(min(cfg.max_seeds, out[-1] + cfg.seeds_per_round))
    return out


def spending(cfg: Any) -> list[float]:
    """Each look's share of ``alpha``: the increments of ``alpha * n / max_seeds`` (they sum to
    ``alpha``)."""
    ns = looks(cfg)
    return [cfg.alpha * (n - prev) / cfg.max_seeds for prev, n in zip([0, *ns[:-1]], ns)]


@lru_cache(maxsize=4096)
def _holm_critical(level: float, m: int, df: int) -> tuple[float, ...]:
    """One-sided t critical values of Holm's steps ``level / m, level / (m - 1), ..., level``."""
    return tuple(float(stats.t.isf(level / (m - j), df)) for j in range(m))


def holm_drops(by_c: dict[str, np.ndarray], alive: list[str], level: float) -> dict[str, dict[str, Any]]:
    """Holm's step-down over the one-sided paired t-tests "``c`` worse than ``d``" for every
    ordered pair of ``alive`` candidates at family-wise ``level``: ``{c: evidence}`` of every
    candidate with a rejected test (its strongest one: ``vs``, mean difference, the simultaneous
    lower bound, the unadjusted one-sided p-value)."""
    x = np.stack([by_c[c] for c in alive])  # (A, n)
    n = x.shape[1]
    d = x[:, None, :] - x[None, :, :]  # (A, A, n): c minus d
    mean = d.mean(axis=2)
    se = d.std(axis=2, ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, mean / se, np.where(mean > 0, np.inf, np.where(mean < 0, -np.inf, 0.0)))
    a = len(alive)
    m = a * (a - 1)  # ordered pairs (c, d), c != d
    np.fill_diagonal(t, -np.inf)
    order = np.argsort(-t, axis=None, kind="stable")[:m]  # largest t (smallest p) first
    crit = _holm_critical(level, m, n - 1)
    out: dict[str, dict[str, Any]] = {}
    for step, flat in enumerate(order):
        i, j = divmod(int(flat), a)
        if not t[i, j] > crit[step]:
            break  # Holm stops at the first non-rejection
        if alive[i] not in out:
            lo = mean[i, j] - crit[step] * se[i, j]
            out[alive[i]] = {"vs": alive[j], "val_diff": float(mean[i, j]), "ci": [float(lo), math.inf],
                             "p": float(stats.t.sf(t[i, j], n - 1)), "threshold": level / (m - step)}
    return out


def _look_holm(race: Race, by_c: dict[str, np.ndarray], level: float) -> tuple[list[str], bool]:
    """Drops of one look under ``holm-spending``; settled: the baseline and one contender left
    and one of their tests rejected."""
    rejected = holm_drops(by_c, race.alive, level)
    race.comparisons += len(race.alive) * (len(race.alive) - 1)
    dropped = [c for c in race.alive if c in rejected and c != BASELINE]
    for c in dropped:
        race.eliminated[c] = {"round": len(race.rounds), "seeds": len(by_c[c]), **rejected[c]}
    settled = len(race.alive) == 2 and BASELINE in race.alive and bool(rejected)
    return dropped, settled


def _look_unadjusted(race: Race, by_c: dict[str, np.ndarray], alpha: float, best: str) -> tuple[list[str], bool]:
    """The pre-2026-12 rule: each contender against the leader, an unadjusted two-sided
    ``1 - alpha`` t interval at every look (kept to replay old folders and to show its error)."""
    level = 1 - alpha
    dropped = []
    for c in race.alive:
        if c == best or c == BASELINE:
            continue
        m, lo, hi = ci_of_difference(list(by_c[c] - by_c[best]), level)
        race.comparisons += 1
        if lo > 0:
            dropped.append(c)
            race.eliminated[c] = {"round": len(race.rounds), "seeds": len(by_c[c]), "vs": best, "val_diff": m, "ci": [lo, hi]}
    left = [c for c in race.alive if c not in dropped]
    settled = False
    if len(left) == 2 and BASELINE in left:
        _, lo, hi = ci_of_difference(list(by_c[left[0]] - by_c[left[1]]), level)
        settled = lo > 0 or hi < 0
    return dropped, settled


def replay(cfg: Any, candidates: list[str], val: Mapping[tuple[str, int], float]) -> Race:
    """Replay the race over the finished validation errors ``val[(candidate, seed)]``.

    Each look of :func:`looks` is evaluated only when all its runs are finished; otherwise the
    race stops there and ``next_runs`` lists the missing runs. Seeds outside the race's schedule
    (e.g. the confirmation's fresh seeds) are ignored.
    """
    race = Race(candidates=list(candidates), alive=list(candidates), seeds={c: [] for c in candidates})
    rule = getattr(cfg, "drop_rule", "holm-spending")
    for n, share in zip(looks(cfg), spending(cfg)):
        want = list(range(cfg.first_seed, cfg.first_seed + n))
        missing = [(c, s) for c in race.alive for s in want if (c, s) not in val]
        if missing:
            race.next_runs = missing
            return race
        for c in race.alive:
            race.seeds[c] = list(want)
        by_c = {c: np.array([val[(c, s)] for s in want], dtype=float) for c in race.alive}
        means = {c: float(by_c[c].mean()) for c in race.alive}
        best = min(race.alive, key=lambda c: (means[c], candidates.index(c)))
        race.best = best
        if rule == "unadjusted":
            dropped, settled = _look_unadjusted(race, by_c, cfg.alpha, best)
        else:
            dropped, settled = _look_holm(race, by_c, share)
        race.rounds.append({"round": len(race.rounds), "seeds": n, "alive": list(race.alive),
                            "val_mean": means, "best": best, "dropped": dropped})
        race.alive = [c for c in race.alive if c not in dropped]
        if n >= cfg.max_seeds or len(race.alive) == 1 or settled:
            break
    race.finished = True
    return race


# ---- confirmation on fresh seeds -------------------------------------------------------------


def fresh_seeds(cfg: Any) -> list[int]:
    """The confirmation's seeds: after every seed the race may use, so never seen by it."""
    start = cfg.first_seed + cfg.max_seeds
    return list(range(start, start + cfg.confirm_seeds))


def confirmation_runs(cfg: Any, race: Race) -> list[tuple[str, int]]:
    """The runs the confirmation needs: the validation leader and the baseline on the fresh
    seeds, once the race has finished with a leader other than the baseline (else none)."""
    if not race.finished or race.best in (None, BASELINE):
        return []
    return [(c, s) for s in fresh_seeds(cfg) for c in (BASELINE, race.best)]


def decide(cfg: Any, race: Race, test: Mapping[tuple[str, int], float]) -> dict[str, Any]:
    """The recommendation from the race and the fresh seeds' test errors ``test[(c, seed)]``:
    the leader if its one-sided paired t-test against the baseline over the fresh seeds rejects
    at ``confirm_alpha``, else the baseline."""
    best = race.best if race.best is not None else BASELINE
    dec: dict[str, Any] = {"selected_on_validation": best, "confirmed_on_test": False, "recommendation": BASELINE}
    need = confirmation_runs(cfg, race)
    if not need or any(k not in test for k in need):
        dec["confirmation"] = None if not need else "pending"
        return dec
    seeds = fresh_seeds(cfg)
    diffs = [test[(best, s)] - test[(BASELINE, s)] for s in seeds]
    m, lo, hi = ci_of_difference(diffs, 1 - 2 * cfg.confirm_alpha)
    s = mean_ci(diffs)
    p = float(stats.t.sf(-m / (s["std"] / math.sqrt(len(diffs))), len(diffs) - 1)) if s["std"] > 0 else float(m >= 0)
    dec["test_diff_vs_target"] = {"mean": m, "lo": lo, "hi": hi, "n": len(diffs), "seeds": seeds, "p_one_sided": p}
    dec["confirmed_on_test"] = bool(hi < 0)
    dec["recommendation"] = best if dec["confirmed_on_test"] else BASELINE
    dec["confirmation"] = "done"
    return dec

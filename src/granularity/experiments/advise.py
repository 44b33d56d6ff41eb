"""``granularity advise``: at which label granularity should *I* pretrain, on *my* data?

Puts the project's pieces together on the user's data set, hierarchy and compute budget:

1. **Candidates** (pretraining label functions): the target labels (the baseline), every
   hierarchy level from one below the target to the leaves, k-means inside each target class at
   a few sizes, and random labels as a negative control; the user may add or remove any.
2. **Paired seeds**: seed ``s`` gives every candidate the same initialisation and data subset
   (the transfer run's seed and ``data_seed``), so candidates are compared seed by seed.
3. **Racing** (successive elimination with family-wise error control, :mod:`.advise_race`):
   every candidate still in contention gets ``min_seeds`` seeds, then ``seeds_per_round`` more
   per round, up to ``max_seeds``. At each look Holm's procedure, at that look's share of
   ``alpha`` (linear alpha spending over the looks), tests every ordered pair of alive candidates
   on their paired *validation* errors; a candidate significantly worse than another is dropped,
   so a co-best candidate is dropped with probability at most ``alpha``. The target baseline is
   never dropped (the answer is relative to it). The rule is fixed before any run and recorded.
4. **Confirmation on fresh seeds**: the validation leader and the baseline are trained again on
   ``confirm_seeds`` seeds the race never saw and compared once on the test split, paired by
   those seeds (one-sided at ``confirm_alpha``); every other figure is exploratory.

Every run is a ``transfer`` run in a results store (``<out>/store``), so a second call with a
larger budget continues the same race: finished runs are reused, the race is replayed from their
results (it is a pure function of them) and goes on where the budget stopped it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from granularity.errors import GranularityError
from granularity.experiments.advise_page import markdown, write_page
from granularity.experiments.advise_race import (  # noqa: F401  (re-exported: the advisor's public names)
    BASELINE, METRICS, Race, _paired, ci_of_difference, confirmation_runs, decide, fresh_seeds, replay,
)
from granularity.utils.config import Config
from granularity.utils.io import check_writable, read_json, write_json
from granularity.utils.stats import mean_ci

class AdviseConfig(Config):
    """What to compare, how long, and the decision rule (validated before any run)."""

    # Base transfer-run settings (a TransferConfig mapping: dataset, data_root, target, model,
    # pretrain, transfer, train_size, ...); source and seed are set per run by the advisor.
    run: dict[str, Any] = Field(default_factory=dict)
    # Validation images held out of the training split for the selection (stratified by leaf,
    # seeded by data_seed, never trained on): a fraction of the training images.
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    candidates: list[str] | None = None  # None: automatic (levels, k-means, random control)
    add: list[str] = Field(default_factory=list)  # extra label functions, e.g. "kmeans-global:40"
    remove: list[str] = Field(default_factory=list)  # drop automatic candidates by name
    kmeans_factors: list[Annotated[int, Field(ge=2)]] = Field(default_factory=lambda: [2, 4])  # kmeans-within at f x target classes
    random_control: bool = True  # random labels with as many classes as the leaves: must lose
    min_seeds: int = Field(3, ge=2)  # seeds every candidate gets before any elimination (>= 2 for a CI)
    seeds_per_round: int = Field(2, ge=1)  # seeds added per round to candidates still in contention
    max_seeds: int = Field(10, ge=2)  # no candidate gets more
    max_runs: int | None = Field(40, ge=1)  # budget: runs in the advice store in total (a later call may raise it)
    max_minutes: float | None = Field(None, gt=0)  # budget: wall minutes of this call (estimated from measured runs)
    alpha: float = Field(0.05, gt=0, lt=0.5)  # racing: chance of ever dropping a co-best candidate, at most
    drop_rule: Literal["holm-spending", "unadjusted"] = "holm-spending"  # "unadjusted": the old rule (see advise_race)
    confirm_seeds: int = Field(5, ge=2)  # fresh seeds for the winner-vs-target confirmation (never raced on)
    confirm_alpha: float = Field(0.025, gt=0, lt=0.5)  # the confirmation's one-sided level
    first_seed: int = 0  # seeds are first_seed, first_seed + 1, ...
    vary_subset: bool = True  # seed s also draws the training subset / validation split (data_seed = s)
    # the figure selected on (validation images) and reported (test images), fixed before any run;
    # "hard"/"easy" need data with cue-free/cued versions of its images (see METRICS)
    metric: Literal["error", "hard", "easy"] = "error"

    @model_validator(mode="after")
    def _check(self) -> AdviseConfig:
        if self.max_seeds < self.min_seeds:
            raise ValueError(f"max_seeds ({self.max_seeds}) must be >= min_seeds ({self.min_seeds})")
        for key in ("source", "seed", "val_size") + (("data_seed",) if self.vary_subset else ()):
            if key in self.run:
                raise ValueError(f"run.{key} is set by the advisor per run; remove it from 'run'")
        return self


# ---- candidates ------------------------------------------------------------------------------


def auto_candidates(cfg: AdviseConfig, hierarchy: Any, target: int) -> list[str]:
    """The baseline, every level below the target, k-means within target classes, random."""
    depth = int(hierarchy.depth)
    n_target = int(hierarchy.num_classes(target))
    n_leaf = int(hierarchy.num_classes(depth))
    out = [BASELINE] + [f"level:{lv}" for lv in range(target + 1, depth + 1)]
    out += [f"kmeans-within:{f * n_target}" for f in cfg.kmeans_factors]
    if cfg.random_control:
        out.append(f"random:{max(n_leaf, 2)}")
    return out


def candidate_list(cfg: AdviseConfig, hierarchy: Any, target: int) -> list[str]:
    """Candidates after the user's ``candidates`` / ``add`` / ``remove``; the baseline is first
    and always present; duplicates (e.g. a level with as many classes as a k-means size) kept
    once by name."""
    from granularity.engine.labels import parse_source

    base = list(cfg.candidates) if cfg.candidates is not None else auto_candidates(cfg, hierarchy, target)
    for name in [*base, *cfg.add, *cfg.remove]:
        parse_source(name)  # one-line error for a malformed label function
    unknown = [r for r in cfg.remove if r not in base and r not in cfg.add]
    if unknown:
        raise GranularityError(
            f"The 'remove' parameter names candidates that are not in the list: {unknown}; candidates are: {base + cfg.add}."
        )
    if BASELINE in cfg.remove:
        raise GranularityError("The 'remove' parameter cannot remove 'target': the advice is relative to the target labels.")
    out: list[str] = []
    for name in [BASELINE, *base, *cfg.add]:
        if name not in out and name not in cfg.remove:
            out.append(name)
    if len(out) < 2:
        raise GranularityError("The advisor needs at least one candidate besides the target labels; got none.")
    return out


# ---- figures from the finished runs ----------------------------------------------------------


def summarise(cfg: AdviseConfig, race: Race, results: Mapping[tuple[str, int], dict[str, Any]],
              n_classes: Mapping[str, int], level: float = 0.95) -> dict[str, Any]:
    """Per candidate over its race seeds (exploratory): validation and test error (mean ± CI),
    paired test difference to the baseline, worst-subclass error; and the decision
    (:func:`.advise_race.decide`): the validation leader against the baseline on fresh seeds."""
    def metric(c: str, key: str) -> dict[int, float]:
        return {s: float(results[(c, s)][key]) for s in race.seeds[c] if (c, s) in results}

    rows = []
    base_test = metric(BASELINE, "test_error")
    for c in race.candidates:
        if not race.seeds[c]:
            continue
        test, val = metric(c, "test_error"), metric(c, "val_error")
        row: dict[str, Any] = {
            "candidate": c, "classes": int(n_classes.get(c, 0)), "seeds": len(race.seeds[c]),
            "status": "eliminated" if c in race.eliminated else "in contention",
            "val_error": mean_ci(list(val.values()), level), "test_error": mean_ci(list(test.values()), level),
        }
        if c != BASELINE:
            m, lo, hi = ci_of_difference(_paired(test, base_test), level)
            row["test_diff_vs_target"] = {"mean": m, "lo": lo, "hi": hi, "n": len(_paired(test, base_test))}
        worst = [results[(c, s)].get("worst_subclass_error") for s in race.seeds[c] if (c, s) in results]
        worst = [w for w in worst if w is not None]
        if worst:
            row["worst_subclass_error"] = mean_ci(worst, level)
        row.update(_other_metrics(c, race, results, level))
        rows.append(row)
    decision = decide(cfg, race, {k: float(v["test_error"]) for k, v in results.items()})
    return {"rows": rows, "decision": decision}


def _other_metrics(c: str, race: Race, results: Mapping[tuple[str, int], dict[str, Any]], level: float) -> dict[str, Any]:
    """Exploratory: candidate ``c``'s test error under every metric its runs report (e.g. the
    cued and cue-free errors beside the selected one), with the paired difference to the target."""
    by_m: dict[str, Any] = {}
    runs = [(s, results[(c, s)].get("test_by_metric") or {}) for s in race.seeds[c] if (c, s) in results]
    for m in METRICS:
        vals = {s: t[m] for s, t in runs if m in t}
        if len(vals) != len(runs) or not vals:
            continue
        by_m[m] = {"test_error": mean_ci(list(vals.values()), level)}
        if c != BASELINE:
            base = {s: results[(BASELINE, s)]["test_by_metric"][m] for s in vals
                    if (BASELINE, s) in results and m in (results[(BASELINE, s)].get("test_by_metric") or {})}
            mean, lo, hi = ci_of_difference(_paired(vals, base), level)
            by_m[m]["test_diff_vs_target"] = {"mean": mean, "lo": lo, "hi": hi, "n": len(_paired(vals, base))}
    return {"test_by_metric": by_m} if len(by_m) > 1 else {}


def _diff_text(d: dict[str, Any]) -> str:
    return f"{100 * d['mean']:+.1f} points ± {100 * (d['hi'] - d['lo']) / 2:.1f}"


def sentence(summary: dict[str, Any], finished: bool, metric: str = "error") -> str:
    """The answer in one sentence, with its evidence (figures under ``metric``)."""
    rows = {r["candidate"]: r for r in summary["rows"]}
    dec = summary["decision"]
    others = [f"{r['candidate']}: {_diff_text(r['test_diff_vs_target'])}" for r in summary["rows"]
              if r["candidate"] != BASELINE and "test_diff_vs_target" in r]
    tail = (f"; race seeds (exploratory): {'; '.join(others)}" if others else "") + (
        "" if finished else " (budget reached before the race and its confirmation finished; a larger budget continues it)")
    sel, d = dec["selected_on_validation"], dec.get("test_diff_vs_target")
    fresh = f"{d['n']} fresh paired seeds the race never saw" if d else ""
    if dec["recommendation"] != BASELINE:
        what = "target test error" if metric == "error" else f"test {METRICS[metric]}"
        return f"Pretrain on {sel} ({rows[sel]['classes']} classes): {what} {_diff_text(d)} vs the target labels, {fresh}{tail}."
    if d:
        return (f"No candidate beats the target labels within the budget: the best on validation, {sel}, "
                f"gives {_diff_text(d)} on the test split over {fresh} (not below 0 at the confirmation's level){tail}.")
    if sel != BASELINE:
        return f"No answer yet: the best on validation, {sel}, awaits its confirmation on fresh seeds{tail}."
    return f"No candidate beats the target labels within the budget: the target labels were best on validation{tail}."


# ---- the driver ------------------------------------------------------------------------------

# Fields that define the race; a later call on the same folder must keep them (budgets may grow).
RACE_FIELDS = ("run", "val_fraction", "candidates", "add", "remove", "kmeans_factors", "random_control",
               "min_seeds", "seeds_per_round", "max_seeds", "alpha", "first_seed", "vary_subset", "metric",
               "drop_rule", "confirm_seeds", "confirm_alpha")
# What a folder written before a field existed ran with: metric 'error'; the old unadjusted rule
# and no fresh-seed confirmation (so such a race is not continued under the new rule).
LEGACY = {"metric": "error", "drop_rule": "unadjusted", "confirm_seeds": None, "confirm_alpha": None}


def _base_run(cfg: AdviseConfig) -> tuple[dict[str, Any], Any, int]:
    """The runs' shared transfer config (with the validation split) and the data set's hierarchy."""
    from granularity.engine.config import TransferConfig
    from granularity.engine.run import prepare_data

    probe = TransferConfig.build(cfg.run, where="advise 'run'")
    ds = prepare_data(probe)
    n_train = len(ds.train)
    val_size = max(1, int(round(cfg.val_fraction * n_train)))
    base = {**cfg.run, "val_size": val_size}
    TransferConfig.build(base, where="advise 'run'")  # the engine refuses a bad val_size here, in one line
    have = sorted(getattr(ds.test, "variants", {}))
    if cfg.metric != "error" and cfg.metric not in have:
        raise GranularityError(
            f"The 'metric' parameter {cfg.metric!r} ({METRICS[cfg.metric]}) needs data that defines those images, "
            f"e.g. a planted cue (--data-option cue.rho=1 --data-option cue.level=<target level>); this data has "
            f"{'only ' + ', '.join(have) if have else 'none'}. Use --metric error."
        )
    return base, ds.hierarchy, probe.target


def _grid(base: dict[str, Any], candidates: list[str], seeds: list[int], vary_subset: bool) -> dict[tuple[str, int], Any]:
    """Every (candidate, seed) run. Seed ``s`` is the init/shuffle seed of all candidates and,
    with ``vary_subset``, also their ``data_seed`` (training subset and validation split): paired
    within a seed, independent draws across seeds."""
    from granularity.sweeps.spec import expand

    grid = {}
    for s in seeds:
        cell = {**base, "data_seed": s} if vary_subset else base
        sw = expand({"name": "advise", "kind": "transfer", "base": cell, "axes": {"source": candidates}, "seeds": [s]})
        grid.update({(r.params["source"], r.seed): r for r in sw.runs})
    return grid


def metric_figures(res: dict[str, Any], metric: str) -> tuple[float, float, dict[str, float]] | None:
    """``(test error, validation error, per-fine-class target accuracy)`` of one run's
    ``result.json`` under ``metric`` (:data:`METRICS`), or None when the run lacks it."""
    if metric == "error":
        return res["target_error"], res["val"]["target_error"], res.get("per_fine_class_target_acc") or {}
    if f"{metric}_error" not in res or f"{metric}_error" not in res.get("val", {}):
        return None
    return res[f"{metric}_error"], res["val"][f"{metric}_error"], res["variants"][metric].get("per_fine_class_target_acc") or {}


def _read_results(store: Any, grid: dict[tuple[str, int], Any], metric: str = "error") -> dict[tuple[str, int], dict[str, Any]]:
    """Figures of every finished run under ``metric``: test and validation target error, worst
    subclass, seconds, and the test error under every metric the run has (``test_by_metric``)."""
    ok = {row["run_id"] for row in store.rows([r.run_id for r in grid.values()]) if row["status"] == "ok"}
    out = {}
    for key, spec in grid.items():
        if spec.run_id not in ok:
            continue
        res = read_json(store.run_dir(spec.run_id) / "result.json")
        if "val" not in res:
            raise GranularityError(f"Run {spec.run_id} in {store.root} has no validation figures; it was not made by the advisor.")
        figs = metric_figures(res, metric)
        if figs is None:
            raise GranularityError(f"Run {spec.run_id} in {store.root} has no {metric!r} figures ({METRICS[metric]}).")
        test, val, per_fine = figs
        out[key] = {"test_error": test, "val_error": val,
                    "worst_subclass_error": (1 - min(per_fine.values())) if per_fine else None,
                    # wall: training + data + evaluation; a fused run's share of its group's wall time
                    "seconds": max(res.get("seconds") or 0, res.get("train_seconds") or 0) / res.get("fused_with", 1) or None,
                    "num_source_classes": res.get("num_source_classes"),
                    "test_by_metric": {m: f[0] for m in METRICS if (f := metric_figures(res, m)) is not None}}
    return out


def _check_same_race(out: Path, cfg: AdviseConfig) -> None:
    path = out / "advise.json"
    if not path.exists():
        return
    old = read_json(path).get("config", {})
    new = cfg.to_dict()
    changed = [k for k in RACE_FIELDS if old.get(k, LEGACY.get(k)) != new.get(k)]
    if changed:
        raise GranularityError(
            f"The advice folder {str(out)!r} holds a race with other settings ({', '.join(changed)} differ); "
            "only the budget (max_runs, max_minutes) may change between calls: use another --out for a new race."
        )


def run_advice(config: AdviseConfig | Mapping[str, Any], out: str | Path, *, executor: str = "local",
               workers: int | None = None, threads: int | None = None, address: str | None = None,
               log: Callable[[str], None] | None = None, fuse: bool = False, fuse_memory: int | None = None) -> dict[str, Any]:
    """Race the candidates on the user's data within the budget; write ``advice.json``,
    ``advice.md`` and ``index.html`` to ``out`` and return the advice. ``fuse``: each round's
    runs that share a model and data train as fused groups on the local executor
    (:func:`~granularity.sweeps.runner.run_sweep`; ``fuse_memory`` bytes at most); same runs and
    run ids, results within float rounding.

    Examples
    --------
    >>> run_advice({"run": {"train_size": 2000}, "max_runs": 30}, "runs/advise")  # doctest: +SKIP
    """
    from granularity.sweeps.runner import run_sweep
    from granularity.sweeps.spec import Sweep
    from granularity.sweeps.store import ResultsStore

    cfg = config if isinstance(config, AdviseConfig) else AdviseConfig.build(config)
    say = log or (lambda _m: None)
    out = check_writable(out)
    _check_same_race(out, cfg)
    t0 = time.perf_counter()
    base, hierarchy, target = _base_run(cfg)
    candidates = candidate_list(cfg, hierarchy, target)
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.max_seeds)) + fresh_seeds(cfg)
    grid = _grid(base, candidates, seeds, cfg.vary_subset)
    write_json(out / "advise.json", {"config": cfg.to_dict(), "candidates": candidates, "base_run": base,
                                     "rule": decision_rule(cfg)})
    say(f"advise: {len(candidates)} candidates ({', '.join(candidates)}); store {out / 'store'}")
    stop = "race and confirmation finished"
    while True:
        with ResultsStore(out / "store") as store:
            results = _read_results(store, grid, cfg.metric)
        race = replay(cfg, candidates, {k: v["val_error"] for k, v in results.items()})
        todo = race.next_runs if not race.finished else [k for k in confirmation_runs(cfg, race) if k not in results]
        if not todo:
            break
        stage = "confirmation on fresh seeds" if race.finished else f"round {len(race.rounds)}"
        why = _over_budget(cfg, results, todo, workers, time.perf_counter() - t0)
        if why:
            stop = f"{why} before the {stage}"
            break
        say(f"advise: {stage}: {len(todo)} runs ({len(race.alive)} candidates in contention)")
        specs = [grid[k] for k in todo]
        sweep = Sweep(name="advise", kind="transfer", axes=[["source"]], seeds=sorted({s for _, s in todo}), runs=specs)
        res = run_sweep(sweep, out / "store", executor=executor, workers=workers, threads=threads, address=address, log=say,
                        fuse=fuse, fuse_memory=fuse_memory)
        if res["failures"]:
            f = res["failures"][0]
            raise GranularityError(
                f"{len(res['failures'])} advisor runs failed (first: {f['params']}: {f['error']}); fix the cause and rerun "
                "the same command: finished runs are kept."
            )
    n_classes = {c: _num_classes(c, hierarchy, target, results) for c in candidates}
    summary = summarise(cfg, race, results, n_classes)
    complete = race.finished and summary["decision"]["confirmation"] != "pending"
    answer = sentence(summary, complete, cfg.metric) if summary["rows"] else f"No answer yet: {stop}; raise the budget and rerun."
    advice = {"answer": answer, "finished": complete, "stopped_because": stop,
              "metric": cfg.metric, "metric_description": METRICS[cfg.metric], "rule": decision_rule(cfg), "candidates": candidates, "rounds": race.rounds,
              "eliminated": race.eliminated, "comparisons_on_validation": race.comparisons,
              "runs": len(results), "wall_time_s": time.perf_counter() - t0, **summary}
    write_json(out / "advice.json", advice)
    write_json(out / "runs.json", per_run_figures(cfg, results))
    (out / "advice.md").write_text(markdown(advice))
    write_page(advice, out)
    say(advice["answer"])
    return advice


def _over_budget(cfg: AdviseConfig, results: Mapping[Any, dict[str, Any]], todo: list, workers: int | None,
                 elapsed: float) -> str | None:
    """Why the next ``todo`` runs do not fit the budget (runs in the folder, confirmation runs
    included; minutes of this call, estimated from the measured runs), or None."""
    if cfg.max_runs is not None and len(results) + len(todo) > cfg.max_runs:
        return f"run budget reached ({len(results)} runs done, {len(todo)} more needed; max_runs={cfg.max_runs})"
    secs = [v["seconds"] for v in results.values() if v.get("seconds")]
    if cfg.max_minutes is not None and secs:
        need = float(np.mean(secs)) * len(todo) / max(1, workers or 1)
        left = cfg.max_minutes * 60 - elapsed
        if need > left:
            return f"time budget reached (~{need / 60:.1f} min needed, {max(left, 0) / 60:.1f} min left)"
    return None


def per_run_figures(cfg: AdviseConfig, results: Mapping[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Every finished run's figures (what the advice is computed from; ``runs.json``)."""
    fresh = set(fresh_seeds(cfg))
    runs = [{"candidate": c, "seed": s, "role": "confirmation" if s in fresh else "race",
             **{k: v for k, v in results[(c, s)].items() if k != "seconds"}} for c, s in sorted(results, key=lambda k: (k[1], k[0]))]
    return {"metric": cfg.metric, "runs": runs}


def results_from_runs(doc: Mapping[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The ``results`` mapping of :func:`summarise` from a ``runs.json`` document."""
    return {(r["candidate"], int(r["seed"])): {k: v for k, v in r.items() if k not in ("candidate", "seed", "role")}
            for r in doc["runs"]}


def _num_classes(c: str, hierarchy: Any, target: int, results: Mapping[tuple[str, int], dict[str, Any]]) -> int:
    made = [v["num_source_classes"] for (name, _), v in results.items() if name == c and v.get("num_source_classes")]
    if made:
        return int(made[0])  # what the label function really made
    from granularity.engine.labels import parse_source

    kind, k = parse_source(c)
    if kind == "target":
        return int(hierarchy.num_classes(target))
    if kind in ("level", "leaf"):
        return int(hierarchy.num_classes(k if kind == "level" else hierarchy.depth))
    return int(k or 0)


def decision_rule(cfg: AdviseConfig) -> str:
    """The race's and the confirmation's rule in words (recorded before any run)."""
    from granularity.experiments.advise_race import looks, spending

    figure = "" if cfg.metric == "error" else f" Error means the {METRICS[cfg.metric]} (metric {cfg.metric!r}), on validation and test alike."
    ns = looks(cfg)
    if cfg.drop_rule == "unadjusted":
        drop = (f"any other candidate (never the target baseline) whose paired validation-error difference to the leader "
                f"has an unadjusted {100 * (1 - cfg.alpha):.0f}% t confidence interval entirely above 0 is dropped "
                "(the old rule: no control of the error over candidates and looks)")
    else:
        drop = (f"every ordered pair of candidates in contention is tested (one-sided paired t-test of the validation "
                f"error) with Holm's step-down procedure at that look's share of alpha = {cfg.alpha:g} (linear spending "
                f"over the looks at {', '.join(map(str, ns))} seeds: " + ", ".join(f"{a:.4g}" for a in spending(cfg))
                + "); a candidate significantly worse than another is dropped (never the target baseline), so a co-best "
                f"candidate is dropped with probability at most {cfg.alpha:g}")
    return (
        f"Seeds are paired across candidates. Every candidate gets {cfg.min_seeds} seeds, then "
        f"{cfg.seeds_per_round} more per round while in contention, up to {cfg.max_seeds}. At each look the candidate "
        f"with the lowest mean validation error is the leader; {drop}. The race ends at {cfg.max_seeds} seeds, when "
        f"only the baseline is left, or when the baseline and one contender remain with a significant difference. "
        f"The leader (if not the target) and the target are then trained on {cfg.confirm_seeds} fresh seeds the race "
        f"never saw and compared once on the test split, paired by those seeds; the leader is recommended only if "
        f"the one-sided paired t-test rejects at {cfg.confirm_alpha:g} (the {100 * (1 - 2 * cfg.confirm_alpha):.0f}% "
        f"t interval of the difference lies below 0).{figure}"
    )

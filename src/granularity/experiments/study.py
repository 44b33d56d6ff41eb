"""The paper's granularity study on a real data set (experiment 2 of Hong et al., in miniature).

Target: a coarse level of the hierarchy. Pretraining label functions compared, each followed
by the same transfer to the target: the target itself (baseline), every other hierarchy level,
k-means inside each target class (aligned) and over the whole set (not aligned) at the same
sizes, random labels, one label per sample; plus a rare-subclass variant (chosen fine classes
kept at a small fraction of their training images). Hard test samples (a secondary metric) are
those that reference models get wrong or classify with a mean softmax margin below
``hard_margin``; the references are defined symmetrically: ``reference_seeds`` models trained on
the target labels *and* as many on the leaf labels, all on training images disjoint from the
study's training subset (and, like every model, never on test images).

Which way the model-based hard set is still biased: a sample is hard because models of the two
reference labellings fail on it, so arms whose errors resemble a reference labelling's (the
target and leaf arms themselves) get a higher hard error than arms with other error patterns
(k-means, random, per-sample), whose hard-set advantage is partly selection. Between target and
leaf the selection is symmetric by construction; ``results.json`` records how many hard samples
each labelling's references contributed, and if one labelling's references contribute most, the
arm of that labelling is the one penalised. With no training images left outside the study's
subset (``train_size`` null) the references cannot be disjoint and no hard set is defined.

Outputs in the study folder: ``study.json`` (resolved config), ``runs/<arm>/seed<s>/`` (one
run folder each, see :mod:`granularity.engine.run`), ``refs/<target|leaf>-seed<s>/`` (reference models),
``hard.npz`` (hard-sample mask), ``results.json`` and ``results.csv`` (mean and 95% CI over
seeds per arm, and the paired difference to the baseline), and PNG figures. Finished runs are
skipped when the study is run again.

Default settings (``fashion-mnist``): 4-group target (tops / trousers / footwear / bags; level
2), 10k training and 5k test images, 3 seeds, small CNN, 3 pretraining epochs + 1 fine-tuning
epoch. The 4-group level is the target because it has a level coarser than it (2 groups: the
paper's too-coarse arm) as well as finer ones. The rare-subclass variant keeps 3% of the
training images of Dress and Sandal, the members that look least like the rest of their group
(tops; footwear), which is the theory's "rare feature" case; the confusable fine classes
(T-shirt / Shirt / Pullover / Coat) all sit inside one target class and do not matter for it. ``full`` size:
``run.train_size=null run.test_size=null seeds=[0,1,2,3,4]`` (:data:`FULL`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_serializer, model_validator

from granularity.engine.config import RareConfig, TransferConfig
from granularity.experiments.runner import Plan, Unit, unit_results
from granularity.errors import GranularityError
from granularity.utils.config import Config
from granularity.utils.figures import clipped_yerr
from granularity.utils.io import write_npz
from granularity.utils.stats import mean_ci


RUN_DEFAULTS = {"test_size": 5000}  # the study's defaults where they differ from a single run's
PER_ARM = ("source", "seed", "rare")  # set by the study for each run (arms, seeds, rare arms)


def _default_run() -> TransferConfig:
    return TransferConfig.build(RUN_DEFAULTS)


class StudyConfig(Config):
    # the base of every run (source, seed and rare are set per arm); defaults as for `transfer`,
    # but test_size 5000. Fashion-MNIST level 2 = 4 groups (see the module docstring); train_size
    # 10000 = 1/6 of Fashion-MNIST: ~3.5 s per CNN epoch on 2 cores
    run: TransferConfig = Field(default_factory=_default_run)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)  # 3 fit the 20-min budget on 2 cores; use 5+ to narrow CIs
    kmeans_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [20, 80])  # total clusters, for both k-means families
    random_classes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [10])  # as many classes as the leaves, but meaningless
    per_sample: bool = True
    rare: RareConfig | None = Field(default_factory=lambda: RareConfig(classes=["Dress", "Sandal"], keep_fraction=0.03))
    rare_sources: list[str] = Field(default_factory=lambda: ["target", "leaf"])
    reference_seeds: int = Field(2, ge=0)  # per labelling (target and leaf), on disjoint training images; 0: no hard set
    hard_margin: float = Field(0.5, ge=0, le=1)  # hard: any reference wrong, or mean softmax margin below this

    @model_validator(mode="before")
    @classmethod
    def _nest_run(cls, data: Any) -> Any:
        return nest_run(data)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)
        for key in PER_ARM:  # set per arm: not settings of the study
            out["run"].pop(key, None)
        return out


def nest_run(data: Any) -> Any:
    """A study mapping with the study's run defaults under ``run``; per-arm keys in ``run``
    are an error."""
    if not isinstance(data, dict) or not isinstance(data.get("run", {}), Mapping):
        return data
    run = dict(data.get("run") or {})
    given = [k for k in PER_ARM if k in run]
    if given:
        raise GranularityError(f"The study sets 'run.{given[0]}' for each arm itself (arms: kmeans_sizes, random_classes, "
                               f"per_sample; seeds; rare); remove it.")
    return {**data, "run": {**RUN_DEFAULTS, **run}}


QUICK = {  # seconds on a CPU: for tests and smoke runs, not for conclusions
    "seeds": [0, 1],
    "kmeans_sizes": [8],
    "random_classes": [4],
    "reference_seeds": 2,
    "run": {"train_size": 600, "test_size": 300, "model": {"name": "cnn", "options": {"width": 8}},
            "pretrain": {"epochs": 1}, "transfer": {"epochs": 1}},
}
FULL = {"run": {"train_size": None, "test_size": None}, "seeds": [0, 1, 2, 3, 4]}  # the whole data set, 5 seeds
# the `granularity study` options of this design -> the key each sets (the run's settings under `run`)
FLAGS = {"seeds": "seeds", **{k: f"run.{k}" for k in ("dataset", "data_root", "data_options", "train_size", "device")},
         "model": "run.model.name", "epochs": "run.pretrain.epochs", "transfer_epochs": "run.transfer.epochs",
         "protocol": "run.transfer.protocol"}


def arms(cfg: StudyConfig, depth: int) -> list[tuple[str, str, RareConfig | None]]:
    """``(arm name, source label function, rare config)`` of every compared arm."""
    nesting_only = cfg.run.transfer.protocol == "map"  # "map" needs labels that nest in the target
    out: list[tuple[str, str | None, Any]] = [("target", "target", None)]
    out += [(f"level:{lv}", f"level:{lv}", None) for lv in range(1, depth + 1)
            if lv != cfg.run.target and not (nesting_only and lv < cfg.run.target)]
    for k in cfg.kmeans_sizes:
        out.append((f"kmeans-within:{k}", f"kmeans-within:{k}", None))
        if not nesting_only:
            out.append((f"kmeans-global:{k}", f"kmeans-global:{k}", None))
    if not nesting_only:
        out += [(f"random:{k}", f"random:{k}", None) for k in cfg.random_classes]
    if cfg.per_sample:
        out.append(("per-sample", "per-sample", None))
    if cfg.rare is not None:
        out += [(f"rare/{s}", s, cfg.rare) for s in cfg.rare_sources]
    return out


def _folder(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def arm_run_folder(arm: str, seed: int) -> str:
    """Where a study keeps one arm's run at one seed, relative to the study folder."""
    return f"runs/{_folder(arm)}/seed{seed}"


def run_config(cfg: StudyConfig, source: str, seed: int, rare: RareConfig | None) -> TransferConfig:
    """The study's run settings with one arm's source, seed and rare classes (validated)."""
    return TransferConfig.build({**cfg.run.model_dump(), "source": source, "seed": seed,
                                 "rare": None if rare is None else rare.model_dump(),
                                 "eval_every_epoch": False})  # the study reads each stage's last evaluation only


def load(cfg: StudyConfig) -> Any:
    from granularity.data import load_dataset

    return load_dataset(cfg.run.dataset, root=cfg.run.data_root)


def plan(cfg: StudyConfig, dataset: Any) -> Plan:
    """Every unit of the study: the reference models (on the training images outside the
    study's subset), then each arm at each seed."""
    _check_sources(cfg)
    return Plan(*study_jobs(cfg, dataset), {"main": dataset, "refs": reference_dataset(cfg, dataset)})


def summarise(cfg: StudyConfig, out: Path, plan: Plan) -> dict[str, Any]:
    return summarise_study(cfg, out, plan.arms, unit_results(out, plan.units))


def _check_sources(cfg: StudyConfig) -> None:
    if cfg.rare is not None:
        for s in cfg.rare_sources:
            TransferConfig.build({"source": s}, where="rare_sources")


def study_jobs(cfg: StudyConfig, dataset: Any) -> tuple[list, list[Unit]]:
    """The arms and every run of the study (reference models first), after the checks that
    need the data set (target level, k-means sizes, rare class names)."""
    depth = check_arm_sizes(dataset, cfg.run.target, cfg.kmeans_sizes, cfg.random_classes, cfg.run.train_size,
                            "images ('train_size')", " (kmeans-within needs a cluster per target class)")
    rare_names = [str(c) for c in (cfg.rare.classes if cfg.rare else [])]
    for c in rare_names:
        if c.lstrip("-").isdigit():
            if not 0 <= int(c) < len(dataset.leaf_names):
                raise GranularityError(
                    f"The 'rare.classes' entry {c} must be a leaf class id in [0, {len(dataset.leaf_names) - 1}] or a name."
                )
        elif c not in dataset.leaf_names:
            from granularity.errors import unknown_name

            raise unknown_name("rare class", c, dataset.leaf_names)
    units = [Unit(f"reference:{rc.source}", rc.seed, rc, rel, data="refs") for rel, rc in reference_jobs(cfg, dataset)]
    arm_list = arms(cfg, depth)
    units += [Unit(a, s, run_config(cfg, src, s, rare), arm_run_folder(a, s)) for s in cfg.seeds for a, src, rare in arm_list]
    return arm_list, units


def check_arm_sizes(dataset: Any, target: int, kmeans: list[int], random: list[int], train_size: int | None,
                    noun: str, why: str = "") -> int:
    """The hierarchy's depth, once the target is a level above the leaves, every k-means size
    at least the target's classes, and no size above the training samples used."""
    depth = int(dataset.hierarchy.depth)
    if target >= depth:
        raise GranularityError(f"The 'target' parameter must be a level coarser than the leaves, in [1, {depth - 1}]. "
                               f"Got {target} instead.")
    n_target = int(dataset.hierarchy.num_classes(target))
    if small := [k for k in kmeans if k < n_target]:
        raise GranularityError(f"The 'kmeans_sizes' parameter must hold sizes >= the {n_target} classes of target level "
                               f"{target}{why}. Got {small} instead.")
    n_train = len(dataset.train) if train_size is None else min(train_size, len(dataset.train))
    for param, sizes in (("kmeans_sizes", kmeans), ("random_classes", random)):
        if big := [k for k in sizes if k > n_train]:
            raise GranularityError(f"The {param!r} parameter must hold sizes <= the {n_train} training {noun}. Got {big} instead.")
    return depth


def reference_dataset(cfg: StudyConfig, dataset: Any) -> Any | None:
    """The training images outside the study's training subset (the references train on them),
    or None when none are left (``train_size`` null or the whole training set)."""
    from granularity.data.base import stratified_indices

    n = len(dataset.train)
    if cfg.reference_seeds == 0 or cfg.run.train_size is None or cfg.run.train_size >= n:
        return None
    used = np.asarray(stratified_indices(dataset.train.y, cfg.run.train_size, cfg.run.data_seed))  # = RealDataset.subset's draw
    return dataset.select(train=np.setdiff1d(np.arange(n), used), references="training images outside the study's subset")


def reference_jobs(cfg: StudyConfig, dataset: Any) -> list[tuple[str, TransferConfig]]:
    """Reference models, ``reference_seeds`` per labelling (target, leaf), pretrained on images
    disjoint from the study's subset and read out directly ("map"; leaf -> target by logsumexp)."""
    ref = reference_dataset(cfg, dataset)
    if ref is None:
        return []
    size = min(cfg.run.train_size, len(ref.train))
    run = cfg.run.model_copy(update={"transfer": cfg.run.transfer.model_copy(update={"protocol": "map"}), "train_size": size})
    ref_cfg = cfg.model_copy(update={"run": run})
    return [(f"refs/{src}-seed{1000 + i}", run_config(ref_cfg, src, 1000 + i, None))
            for src in ("target", "leaf") for i in range(cfg.reference_seeds)]


def dry_run(cfg: StudyConfig) -> str:
    """Validate the study and every run it would start (see
    :func:`granularity.engine.run.plan_transfer`) without training; nothing is written."""
    from granularity.engine.run import check_plan, prepare_data, resolve_device

    device = resolve_device(cfg.run.device)
    dataset = load(cfg)
    p = plan(cfg, dataset)
    need = max(check_plan(u.config, prepare_data(u.config, dataset), device=device)["memory_estimate_bytes"] for u in p.units)
    refs = sum(u.data == "refs" for u in p.units)
    return (f"{len(p.units)} runs ({len(p.arms)} arms x {len(cfg.seeds)} seeds + {refs} references); "
            f"largest memory estimate: {need / 2**20:.1f} MiB")


def hard_mask(out: Path, rels: list[str], margin: float) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Hard test samples: wrong for any reference model, or mean margin below ``margin``; and
    how many samples each labelling's references alone would mark hard."""
    preds = {rel: np.load(out / rel / "predictions.npz") for rel in rels}
    wrong = np.any([p["pred"] != p["y_target"] for p in preds.values()], axis=0)
    mean_margin = np.mean([p["margin"] for p in preds.values()], axis=0)
    by = {}
    for src in ("target", "leaf"):
        ps = [p for rel, p in preds.items() if rel.startswith(f"refs/{src}-")]
        by[src] = int((np.any([p["pred"] != p["y_target"] for p in ps], axis=0) | (np.mean([p["margin"] for p in ps], axis=0) < margin)).sum())
    return wrong | (mean_margin < margin), mean_margin, by


def summarise_study(cfg: StudyConfig, out: Path, arm_list, results: dict[str, dict]) -> dict[str, Any]:
    refs = sorted(rel for rel in results if rel.startswith("refs/"))
    if refs:
        hard, mean_margin, by_refs = hard_mask(out, refs, cfg.hard_margin)
        write_npz(out / "hard.npz", hard=hard, reference_margin=mean_margin)
    else:  # no disjoint training images for references: no model-based hard set
        n_test = len(np.load(out / next(iter(results)) / "predictions.npz")["pred"])
        hard, by_refs = np.zeros(n_test, dtype=bool), {}
    per: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    info: dict[str, dict] = {}
    for arm, _, rare in arm_list:
        for s in cfg.seeds:
            rel = arm_run_folder(arm, s)
            r = results[rel]
            p = np.load(out / rel / "predictions.npz")
            wrong = p["pred"] != p["y_target"]
            m = per[arm]
            m["target_error"].append(r["target_error"])
            m["hard_error"].append(float(wrong[hard].mean()) if hard.any() else math.nan)
            m["easy_error"].append(float(wrong[~hard].mean()) if (~hard).any() else math.nan)
            if rare is not None:
                m["rare_error"].append(r["rare_error"])
                m["common_error"].append(r["common_error"])
            for name, acc in r["per_fine_class_target_acc"].items():
                m[f"fine:{name}"].append(1 - acc)
            info[arm] = {"family": "rare" if rare is not None else r["source_family"],
                         "num_source_classes": r["num_source_classes"], "source": r["source"]}
    base = per["target"]
    table = []
    for arm, _, rare in arm_list:
        m = per[arm]
        row: dict[str, Any] = {"arm": arm, **info[arm], "n_seeds": len(cfg.seeds)}
        for key in ("target_error", "hard_error", "easy_error", "rare_error", "common_error"):
            if key in m:
                row[key] = mean_ci(m[key])
        if rare is None and arm != "target":  # paired by seed: same data, same test images
            for key in ("target_error", "hard_error"):
                row[f"{key}_minus_baseline"] = mean_ci(np.subtract(m[key], base[key]))
        if rare is not None and arm != f"rare/{cfg.rare_sources[0]}":
            first = per[f"rare/{cfg.rare_sources[0]}"]
            row["rare_error_minus_first_rare_arm"] = mean_ci(np.subtract(m["rare_error"], first["rare_error"]))
        row["per_fine_class_target_error"] = {k[5:]: mean_ci(v)["mean"] for k, v in m.items() if k.startswith("fine:")}
        table.append(row)
    return {
        "config": cfg.to_dict(),
        "hard_samples": {"n": int(hard.sum()), "fraction": float(hard.mean()), "secondary": True,
                         "rule": (f"wrong for any of {len(refs)} reference models ({cfg.reference_seeds} target-, {cfg.reference_seeds} leaf-trained, "
                                  f"on training images disjoint from the study's) or mean margin < {cfg.hard_margin}") if refs
                         else "none: no training images outside the study's subset for disjoint reference models",
                         "hard_by_reference_labelling": by_refs},
        "hierarchy_hash": results[next(iter(results))].get("hierarchy_hash"),
        "table": table,
    }


def format_table(summary: Mapping[str, Any]) -> str:
    """The study's table as text: per arm, its number of classes and each error, mean ± CI."""
    from granularity.utils.stats import fmt_ci

    table = summary["table"]
    keys = [k for k in ("target_error", "hard_error", "easy_error", "rare_error") if any(k in r for r in table)]
    lines = [f"{'arm':<20} {'classes':>7}  " + "  ".join(f"{k:<16}" for k in keys)]
    for r in table:
        cells = "  ".join(f"{fmt_ci(r[k]) if k in r else '-':<16}" for k in keys)
        lines.append(f"{r['arm']:<20} {r['num_source_classes']:>7}  {cells}")
    return "\n".join(lines)


def describe(summary: Mapping[str, Any], out: Path) -> str:
    """What ``granularity study`` prints at the end: the table, the hard set, where the files are."""
    hs = summary["hard_samples"]
    return (f"{format_table(summary)}\nhard samples: {hs['n']} ({hs['rule']}); {summary['seconds']:.0f} s; "
            f"results in {out}/results.json, figures {', '.join(summary['figures'])}")


CSV_COLUMNS = ("arm", "family", "num_source_classes", "n_seeds",
               *(f"{k}.{p}" for k in ("target_error", "hard_error", "easy_error", "rare_error", "common_error",
                                      "target_error_minus_baseline", "hard_error_minus_baseline") for p in ("mean", "ci")))


def _yerr(rows: list[dict], key: str) -> np.ndarray:
    """Error bars of ``key`` clipped to [0, 1] (an error rate's interval never leaves it)."""
    return clipped_yerr([r[key]["mean"] for r in rows], [r[key]["ci"] for r in rows])


def plot_study(summary: dict, out: Path) -> list[str]:
    """Target error vs number of pretraining classes; easy vs hard error; rare subclasses
    (PNG + PDF + SVG each; returns the PNG names)."""
    from granularity.utils.figures import legend_outside, pyplot, save_figure

    plt = pyplot()

    table = [r for r in summary["table"] if r["family"] != "rare"]
    fams = defaultdict(list)
    for r in table:
        fams["hierarchy" if r["family"] in ("target", "hierarchy") else r["family"]].append(r)
    base = next(r for r in table if r["arm"] == "target")
    files = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for fam, rows in fams.items():
        rows = sorted(rows, key=lambda r: r["num_source_classes"])
        ax.errorbar([r["num_source_classes"] for r in rows], [r["target_error"]["mean"] for r in rows],
                    yerr=_yerr(rows, "target_error"), marker="o", capsize=3, label=fam)
    ax.axhline(base["target_error"]["mean"], color="grey", ls="--", lw=1, label="baseline (target labels)")
    ax.set_xscale("log")
    ax.set_xlabel("number of pretraining classes")
    ax.set_ylabel("target test error")
    n = base["n_seeds"]
    ax.set_title(f"Target error vs pretraining granularity (mean, 95% CI, {n} seeds)", fontsize=9)
    legend_outside(ax)
    save_figure(fig, out / "error_vs_classes.png")
    files.append("error_vs_classes.png")

    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(table)), 4.2))
    xs = np.arange(len(table))
    for off, key, label in ((-0.2, "easy_error", "easy"), (0.2, "hard_error", "hard")):
        ax.bar(xs + off, [r[key]["mean"] for r in table], 0.4, yerr=_yerr(table, key), capsize=2, label=label)
    ax.set_xticks(xs, [r["arm"] for r in table], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("target test error")
    ax.set_title(f"Easy vs hard test samples ({summary['hard_samples']['n']} hard by reference models)", fontsize=9)
    legend_outside(ax)
    save_figure(fig, out / "easy_vs_hard.png")
    files.append("easy_vs_hard.png")

    rare = [r for r in summary["table"] if r["family"] == "rare"]
    if rare:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        xs = np.arange(len(rare))
        for off, key, label in ((-0.2, "common_error", "other subclasses"), (0.2, "rare_error", "rare subclasses")):
            ax.bar(xs + off, [r[key]["mean"] for r in rare], 0.4, yerr=_yerr(rare, key), capsize=2, label=label)
        ax.set_xticks(xs, [r["arm"] for r in rare], fontsize=8)
        ax.set_ylabel("target test error")
        legend_outside(ax)
        save_figure(fig, out / "rare_subclasses.png")
        files.append("rare_subclasses.png")
    return files

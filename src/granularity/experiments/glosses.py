"""The granularity U-curve over WordNet levels, on real text: ``granularity study --dataset wordnet-glosses``.

Data: :mod:`granularity.data.wordnet_glosses` (one noun gloss per sample, labels = its hypernym
path). Target: a coarse WordNet depth (default level 2: 11 classes such as *object*,
*psychological feature*, *attribute*). Pretraining label functions, each followed by the same
transfer to the target (the engine's :func:`~granularity.engine.run.run_transfer`): the target
itself (the baseline), every other WordNet level (coarser and finer, down to the leaves),
k-means of LSA embeddings inside each target class, random labels, and one label per sample.
The model is the bag-of-n-grams text model (``text-ngrams``).

Outputs in the study folder: ``study.json`` (resolved config), ``runs/<arm>/seed<s>/`` (one run
folder each), ``results.json`` / ``results.csv`` (per arm: number of pretraining classes, mean
and 95% CI over seeds of the target error, and the paired difference to the baseline, seed by
seed), ``dataset.json`` (class counts per level, splits, lemma scrubbing) and
``u_curve.png`` (target error against the number of pretraining classes, log x). Finished runs
are skipped when the study is run again; a folder holding another config is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from granularity.data.wordnet_glosses import NAME, GlossOptions, load_wordnet_glosses
from granularity.engine.config import ModelConfig, StageConfig, TransferConfig, TransferStageConfig
from granularity.experiments.runner import Plan, Unit, unit_results
from granularity.errors import GranularityError
from granularity.utils.config import Config
from granularity.utils.io import write_json
from granularity.utils.stats import mean_ci


def _model() -> ModelConfig:
    return ModelConfig(name="text-ngrams", options={"dim": 64, "sparse": True})


# Plain SGD on sparse embedding gradients (fastText's recipe; ~10x faster on 2 CPU cores than
# dense AdamW). The mean over a gloss's ~40 n-grams scales each embedding's gradient by ~1/40,
# hence the large step: lr 30 was the best of 1 / 3 / 10 / 30 / 100 for the target-only
# baseline on the validation split (100 diverges); see docs/wordnet-glosses.md.
def _pretrain() -> StageConfig:
    return StageConfig(epochs=3, batch_size=128, optimizer="sgd", lr=30.0, momentum=0.0, weight_decay=0.0)


def _transfer() -> TransferStageConfig:
    return TransferStageConfig(epochs=1, batch_size=128, optimizer="sgd", lr=30.0, momentum=0.0, weight_decay=0.0,
                               warmup_epochs=0.2)


class GlossStudyConfig(Config):
    data: GlossOptions = Field(default_factory=GlossOptions)  # the data set (min_depth, max_depth, min_count, ...)
    target: int = Field(2, ge=1)  # WordNet depth of the downstream task
    levels: list[Annotated[int, Field(ge=1)]] | None = None  # pretraining levels; None = every level but the target
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    # stratified subsets sized for <= 30 min on 2 shared CPU cores: the engine evaluates every
    # level after every epoch, which for one label per sample (a 10k-way head) costs more than
    # its training; None = the whole split (55,865 training / 15,970 test glosses)
    train_size: int | None = Field(10000, ge=1)
    test_size: int | None = Field(4000, ge=1)
    data_seed: int = 0
    kmeans_sizes: list[Annotated[int, Field(ge=1)]] | None = None  # kmeans-within:K; None = as many as the leaves
    random_classes: list[Annotated[int, Field(ge=1)]] | None = None  # random:K; None = as many as the leaves
    per_sample: bool = True
    embedding: str = "lsa"  # for k-means: TF-IDF + truncated SVD of the token ids
    model: ModelConfig = Field(default_factory=_model)
    pretrain: StageConfig = Field(default_factory=_pretrain)
    transfer: TransferStageConfig = Field(default_factory=_transfer)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # intra-op threads while the study runs (restored afterwards): these small sparse ops gain
    # nothing from a second thread and lose a lot to it on a shared machine; None = leave as is
    threads: int | None = Field(1, ge=1)


QUICK = {  # seconds on a CPU: for tests and smoke runs, not for conclusions
    "seeds": [0, 1],
    "train_size": 800,
    "test_size": 400,
    "levels": [1, 3, 7],
    "kmeans_sizes": [16],
    "random_classes": [16],
    "model": {"name": "text-ngrams", "options": {"dim": 16, "sparse": True}},
    "pretrain": {"epochs": 1},  # merged into the defaults (see study_config)
    "transfer": {"epochs": 1},
}


def study_config(config: GlossStudyConfig | Mapping[str, Any] | None = None) -> GlossStudyConfig:
    """A validated config: a mapping is merged into the defaults key by key, so
    ``{"pretrain": {"epochs": 1}}`` keeps the default optimiser of that stage (and sparse
    gradients need plain SGD: :func:`check_sparse`)."""
    if isinstance(config, GlossStudyConfig):
        return config
    from granularity.utils.config import deep_merge

    cfg = GlossStudyConfig.build(deep_merge(GlossStudyConfig().to_dict(), dict(config or {})))
    check_sparse(cfg)
    return cfg


def _sizes(sizes: list[int] | None, n_leaves: int) -> list[int]:
    return [n_leaves] if sizes is None else list(sizes)


def study_arms(cfg: GlossStudyConfig, depth: int, n_leaves: int) -> list[tuple[str, str]]:
    """``(arm name, source label function)`` of every compared arm, baseline first."""
    levels = cfg.levels if cfg.levels is not None else list(range(1, depth + 1))
    bad = [lv for lv in levels if lv > depth]
    if bad:
        raise GranularityError(f"The 'levels' parameter must hold WordNet levels in [1, {depth}]. Got {bad} instead.")
    out = [("target", "target")]
    out += [(f"level:{lv}", f"level:{lv}") for lv in sorted(set(levels)) if lv != cfg.target]
    out += [(f"kmeans-within:{k}", f"kmeans-within:{k}") for k in _sizes(cfg.kmeans_sizes, n_leaves)]
    out += [(f"random:{k}", f"random:{k}") for k in _sizes(cfg.random_classes, n_leaves)]
    if cfg.per_sample:
        out.append(("per-sample", "per-sample"))
    return out


def run_config(cfg: GlossStudyConfig, source: str, seed: int) -> TransferConfig:
    return TransferConfig(
        dataset=NAME, train_size=cfg.train_size, test_size=cfg.test_size, data_seed=cfg.data_seed,
        target=cfg.target, source=source, embedding=cfg.embedding, model=cfg.model, pretrain=cfg.pretrain,
        transfer=cfg.transfer, seed=seed, device=cfg.device, save_checkpoints=False,
    )


def study_jobs(cfg: GlossStudyConfig, dataset: Any) -> tuple[list[tuple[str, str]], list[Unit]]:
    """The arms and every run, after the checks that need the data set (target level, k-means
    and random sizes)."""
    from granularity.experiments.study import check_arm_sizes

    n_leaves = int(dataset.hierarchy.num_leaves)
    depth = check_arm_sizes(dataset, cfg.target, _sizes(cfg.kmeans_sizes, n_leaves), _sizes(cfg.random_classes, n_leaves),
                            cfg.train_size, "glosses")
    arms = study_arms(cfg, depth, n_leaves)
    units = [Unit(arm, s, run_config(cfg, src, s), f"runs/{arm.replace(':', '')}/seed{s}") for s in cfg.seeds for arm, src in arms]
    return arms, units


def load(cfg: GlossStudyConfig) -> Any:
    return load_wordnet_glosses(**cfg.data.model_dump())


def plan(cfg: GlossStudyConfig, dataset: Any) -> Plan:
    return Plan(*study_jobs(cfg, dataset), {"main": dataset})


def dry_run(cfg: GlossStudyConfig) -> str:
    p = plan(cfg, load(cfg))
    return f"{len(p.units)} runs ({len(p.arms)} arms x {len(cfg.seeds)} seeds): {', '.join(a for a, _ in p.arms)}"


def describe(summary: dict[str, Any], out: Path) -> str:
    from granularity.utils.stats import fmt_ci

    lines = [f"{'arm':<22} {'classes':>7}  {'target error':<16} {'minus baseline':<16}"]
    for r in summary["table"]:
        diff = fmt_ci(r["target_error_minus_baseline"]) if "target_error_minus_baseline" in r else "-"
        lines.append(f"{r['arm']:<22} {r['num_source_classes']:>7}  {fmt_ci(r['target_error']):<16} {diff:<16}")
    return "\n".join([*lines, f"{summary['seconds_this_invocation']:.0f} s; results in {out}/results.json, "
                                f"figure {', '.join(summary['figures'])}"])


# the `granularity study` options of this design -> the key each sets (its data set is its own)
FLAGS = {"seeds": "seeds", "train_size": "train_size", "device": "device", "model": "model.name",
         "epochs": "pretrain.epochs", "transfer_epochs": "transfer.epochs"}


def check_sparse(cfg: GlossStudyConfig) -> None:
    """Sparse embedding gradients work with plain SGD only (one-line error otherwise)."""
    if not cfg.model.options.get("sparse"):
        return
    for name, st in (("pretrain", cfg.pretrain), ("transfer", cfg.transfer)):
        if st.optimizer != "sgd" or st.momentum or st.weight_decay:
            raise GranularityError(
                f"The model option 'sparse' (sparse embedding gradients) needs plain SGD in every stage, but '{name}' has "
                f"optimizer={st.optimizer!r}, momentum={st.momentum}, weight_decay={st.weight_decay}; set "
                f"{name}.optimizer=sgd {name}.momentum=0 {name}.weight_decay=0, or model.options.sparse=false."
            )


def dataset_summary(ds: Any, cfg: GlossStudyConfig) -> dict[str, Any]:
    """Class counts per level (whole data set's hierarchy and the training glosses used) and
    the data set's own statistics (splits, lemma scrubbing)."""
    hier = ds.hierarchy
    y = ds.train.y.cpu().numpy()
    if cfg.train_size is not None and cfg.train_size < len(y):
        from granularity.data import stratified_indices

        y = y[stratified_indices(y, cfg.train_size, cfg.data_seed).numpy()]
    levels = []
    for lv in range(1, int(hier.depth) + 1):
        counts = np.bincount(hier.relabel(y, lv), minlength=hier.num_classes(lv))
        levels.append({"level": lv, "classes": int(hier.num_classes(lv)), "train_min": int(counts.min()),
                       "train_median": float(np.median(counts)), "train_max": int(counts.max())})
    keep = ("split_sizes", "n_synsets", "n_samples", "n_dropped", "n_below_min_depth", "lemma_scrub", "tokenizer", "options")
    return {"name": ds.name, "version": ds.version, "hierarchy_hash": hier.content_hash, "n_train_used": int(len(y)),
            "n_test_used": int(len(ds.test) if cfg.test_size is None else min(cfg.test_size, len(ds.test))),
            "levels": levels, **{k: ds.info[k] for k in keep if k in ds.info}}


def summarise(cfg: GlossStudyConfig, out: Path, plan: Plan) -> dict[str, Any]:
    """Per arm: classes, mean ± 95% CI of the target error over seeds, and the paired
    difference to the baseline (same seed, same data, same test glosses); the data set's
    statistics (also written to ``dataset.json``)."""
    arms, units, results = plan.arms, plan.units, unit_results(out, plan.units)
    err: dict[str, dict[int, float]] = {a: {} for a, _ in arms}
    secs: dict[str, list[float]] = {a: [] for a, _ in arms}
    info: dict[str, dict] = {}
    for u in units:
        r = results[u.folder]
        err[u.arm][u.seed] = r["target_error"]
        secs[u.arm].append(r.get("train_seconds", math.nan))
        info[u.arm] = {"source": r["source"], "family": r["source_family"], "num_source_classes": r["num_source_classes"]}
    base = err["target"]
    table = []
    for arm, src in arms:
        row = {"arm": arm, **info[arm], "level": int(src.split(":")[1]) if src.startswith("level:") else (cfg.target if arm == "target" else None),
               "n_seeds": len(cfg.seeds), "target_error": mean_ci([err[arm][s] for s in cfg.seeds]),
               "per_seed_target_error": [err[arm][s] for s in cfg.seeds], "train_seconds_mean": float(np.mean(secs[arm]))}
        if arm != "target":
            row["target_error_minus_baseline"] = mean_ci([err[arm][s] - base[s] for s in cfg.seeds])
        table.append(row)
    write_json(out / "dataset.json", data := dataset_summary(plan.data["main"], cfg))
    return {"config": cfg.to_dict(), "table": table, "dataset": data}


CSV_COLUMNS = ("arm", "family", "level", "num_source_classes", "n_seeds", "target_error.mean", "target_error.ci",
               "minus_baseline_mean=target_error_minus_baseline.mean", "minus_baseline_ci=target_error_minus_baseline.ci",
               "train_seconds_mean")


def plot_u_curve(summary: dict[str, Any], out: Path) -> list[str]:
    """``u_curve.png`` (+ .pdf, .svg): target error (mean ± 95% CI, cut at [0, 1]) against
    pretraining classes, log x."""
    from granularity.utils.figures import clipped_band, clipped_yerr, legend_outside, pyplot, save_figure

    plt = pyplot()

    def yerr(rows):
        return clipped_yerr([r["target_error"]["mean"] for r in rows], [r["target_error"]["ci"] for r in rows])

    table = summary["table"]
    base = next(r for r in table if r["arm"] == "target")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lv = level_rows(table)
    ax.errorbar([r["num_source_classes"] for r in lv], [r["target_error"]["mean"] for r in lv],
                yerr=yerr(lv), marker="o", capsize=3, label="WordNet level L")
    for r in lv:
        ax.annotate(f"L{r['level']}", (r["num_source_classes"], r["target_error"]["mean"]), textcoords="offset points",
                    xytext=(4, 6), fontsize=8)
    markers = {"kmeans-within": ("s", "k-means within target"), "random": ("x", "random labels"), "per-sample": ("^", "one label per sample")}
    for fam, (m, label) in markers.items():
        rows = [r for r in table if r["family"] == fam]
        if rows:
            ax.errorbar([r["num_source_classes"] for r in rows], [r["target_error"]["mean"] for r in rows],
                        yerr=yerr(rows), marker=m, linestyle="none", capsize=3, label=label)
    b = base["target_error"]["mean"]
    ax.axhline(b, color="grey", linestyle="--", linewidth=1, label=f"target level {base['level']} (baseline)")
    lo, hi = clipped_band([b], [base["target_error"]["ci"]])
    ax.axhspan(lo[0], hi[0], color="grey", alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("pretraining classes (log scale)")
    ax.set_ylabel(f"target error (level {base['level']}, test)")
    ax.set_title(f"WordNet glosses: mean ± 95% CI over {base['n_seeds']} seeds", fontsize=10)
    legend_outside(ax)
    save_figure(fig, out / "u_curve.png")
    return ["u_curve.png"]


def level_rows(table: list[dict]) -> list[dict]:
    """The rows of WordNet levels (the baseline included), by number of classes: the curve."""
    return sorted((r for r in table if r["level"] is not None), key=lambda r: r["num_source_classes"])

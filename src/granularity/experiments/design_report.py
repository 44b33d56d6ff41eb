"""Tables, figures and the "where fine labels help" page of a design (see :mod:`.designs`).

Every row is one (cell, transfer, metric): the mean and 95% CI per arm over seeds and the paired
difference leaf minus target (negative = fine pretraining has the lower error). Seed-level
inference first: the headline test and CI are the paired t over seeds; beside them a
hierarchical bootstrap CI (seeds, then images within seeds) where the per-seed image counts are
recorded (a plain bootstrap over seeds only from 10 seeds on). The exact McNemar test on the
per-image outcomes pooled over seeds is a secondary column, *conditional on these trained
models* (it says nothing about another seed). The primary contrast declared in the config is
marked and reported first; every other row is secondary, with Holm-adjusted p-values over them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from granularity.experiments.designs import ARMS, DesignConfig, cells, transfers, unit_dir
from granularity.utils.io import read_json, write_json
from granularity.utils.stats import fmt_ci, fmt_p, hierarchical_bootstrap, holm, mcnemar_exact, mean_ci, paired_difference


def _metrics(p: Any, cue: bool) -> dict[str, tuple[float, np.ndarray | None]]:
    """Metric -> (value, per-image correctness or None) of one transfer's predictions."""
    def err(name):
        ok = p[f"pred_{name}"] == p[f"target_{name}"]
        return float(1 - ok.mean()), ok

    def worst(name):
        ok = p[f"pred_{name}"] == p[f"target_{name}"]
        leaf = p[f"leaf_{name}"]
        return max(float(1 - ok[leaf == c].mean()) for c in np.unique(leaf)), None

    if cue:
        return {"hard_error": err("test_hard"), "easy_error": err("test_easy"), "worst_subclass_error": worst("test_hard"),
                "val_hard_error": err("val_hard"), "val_easy_error": err("val_easy")}
    return {"target_error": err("test"), "worst_subclass_error": worst("test"), "val_target_error": err("val")}


def summarise_design(cfg: DesignConfig, out: Path) -> dict[str, Any]:
    """Read every finished unit of the design and build the results table."""
    rows: list[dict[str, Any]] = []
    primary = _primary_key(cfg)
    for cell in cells(cfg):
        for tname, protocol, k in transfers(cfg):
            vals: dict[str, dict[str, list]] = {}
            for arm in ARMS:
                for s in cfg.seeds:
                    p = np.load(unit_dir(out, cell, s, arm) / tname / "predictions.npz")
                    for metric, (v, ok) in _metrics(p, cell.cue is not None).items():
                        d = vals.setdefault(metric, {"target": [], "leaf": [], "ok_target": [], "ok_leaf": []})
                        d[arm].append(v)
                        d[f"ok_{arm}"].append(ok)
            for metric, d in vals.items():
                row = {"cell": cell.name, "grouping": cell.grouping, "rho": cell.cue.rho if cell.cue else None,
                       "strength": cell.cue.strength if cell.cue else None, "transfer": tname, "protocol": protocol,
                       "transfer_per_class": k, "metric": metric, "n_seeds": len(cfg.seeds),
                       "per_seed": {"target": d["target"], "leaf": d["leaf"]}}
                if d["ok_target"][0] is not None:  # per-image outcomes: per seed, and pooled (conditional)
                    per = [mcnemar_exact(a, b) for a, b in zip(d["ok_leaf"], d["ok_target"])]
                    row["per_seed_counts"] = [[m["a_only"], m["b_only"], m["n"]] for m in per]
                    row["mcnemar"] = mcnemar_exact(np.concatenate(d["ok_leaf"]), np.concatenate(d["ok_target"]))
                row["primary"] = (cell.name, protocol, k, metric) == primary
                rows.append(row)
    rows.sort(key=lambda r: not r["primary"])
    return {"design": cfg.design, "config": cfg.to_dict(), "primary": dict(zip(("cell", "protocol", "transfer_per_class", "metric"), primary)),
            "contrast": "leaf minus target pretraining (negative: fine labels lower the error)", "table": row_statistics(rows),
            "cue_counts": _cue_counts(cfg, out), "compute_seconds": _compute_seconds(cfg, out)}


def row_statistics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row's statistics from its per-seed figures alone (``per_seed``; ``per_seed_counts``
    where recorded): arm means, the paired t over seeds (the headline), the hierarchical
    bootstrap, and Holm-adjusted p-values over the secondary rows (``p_holm``). The pooled
    McNemar counts, where present, are kept as they are (secondary, conditional on the models)."""
    for r in rows:
        r["target"], r["leaf"] = mean_ci(r["per_seed"]["target"]), mean_ci(r["per_seed"]["leaf"])
        r["leaf_minus_target"] = paired_difference(r["per_seed"]["leaf"], r["per_seed"]["target"])
        if r.get("per_seed_counts"):
            r["hierarchical_bootstrap"] = hierarchical_bootstrap(r["per_seed_counts"])
        else:
            r.pop("hierarchical_bootstrap", None)
    secondary = [r for r in rows if not r["primary"]]
    for r, p in zip(secondary, holm([r["leaf_minus_target"]["p_t"] for r in secondary])):
        r["p_holm"] = p
    for r in rows:
        if r["primary"]:
            r["p_holm"] = None  # the one declared test: no adjustment
    return rows


#: The columns of a design's ``results.csv`` (``name=dotted.path`` of a row; see
#: :func:`granularity.experiments.runner.write_table_csv`).
CSV_COLUMNS = ("primary", "cell", "grouping", "rho", "strength", "protocol", "transfer_per_class", "metric", "n_seeds",
               "target.mean", "target.ci", "leaf.mean", "leaf.ci",
               *(f"diff_{k}=leaf_minus_target.{k}" for k in ("mean", "t_lo", "t_hi")), "p_t=leaf_minus_target.p_t", "p_holm",
               "diff_hier_boot_lo=hierarchical_bootstrap.lo", "diff_hier_boot_hi=hierarchical_bootstrap.hi",
               "diff_seed_boot_lo=leaf_minus_target.boot_lo", "diff_seed_boot_hi=leaf_minus_target.boot_hi",
               "mcnemar_conditional_leaf_only=mcnemar.a_only", "mcnemar_conditional_target_only=mcnemar.b_only",
               "mcnemar_conditional_p=mcnemar.p")


def resummarise(out: Path | str) -> dict[str, Any]:
    """Recompute a finished design's statistics from its ``results.json`` per-seed figures (no
    run is recomputed; :func:`row_statistics`) and rewrite ``results.json``, ``results.csv``,
    ``report.md`` and the figures (the bridge phase diagram from the simulator grids it holds).

    Examples
    --------
    >>> resummarise("docs/results/bridge")  # doctest: +SKIP
    """
    from granularity.experiments.phase_bridge import add_simulator
    from granularity.experiments.runner import write_table_csv

    out = Path(out)
    summary = read_json(out / "results.json")
    summary["table"] = row_statistics(summary["table"])
    write_table_csv(out / "results.csv", summary["table"], CSV_COLUMNS)
    summary["figures"] = plot_design(summary, out)
    if summary["design"] == "bridge-phase":
        summary["figures"] += add_simulator(summary, out, False)
    write_json(out / "results.json", summary)
    (out / "report.md").write_text(report_markdown(summary))
    return summary


def _primary_key(cfg: DesignConfig) -> tuple:
    p = cfg.primary
    cell = p.cell or cells(cfg)[0].name
    k = None if p.protocol == "map" else (p.transfer_per_class or max(cfg.transfer_per_class))
    return cell, p.protocol, k, p.metric


def _cue_counts(cfg: DesignConfig, out: Path) -> dict[str, Any]:
    got = {}
    for cell in cells(cfg):
        if cell.cue is not None:
            f = unit_dir(out, cell, cfg.seeds[0], "target") / "pretrain.json"
            if f.exists():
                got[cell.name] = read_json(f).get("cue_counts")
    return got


def _compute_seconds(cfg: DesignConfig, out: Path) -> float:
    """Training and transfer seconds summed over every unit (interrupted work not counted); a
    unit trained in a fused group of K counts its share, 1/K of the group's wall time."""
    tot = 0.0
    share = lambda r: r["seconds"] / r.get("fused_with", 1)  # noqa: E731
    for cell in cells(cfg):
        for s in cfg.seeds:
            for arm in ARMS:
                d = unit_dir(out, cell, s, arm)
                if (d / "pretrain.json").exists():
                    tot += share(read_json(d / "pretrain.json"))
                tot += sum(share(read_json(d / t / "result.json")) for t, _, _ in transfers(cfg))
    return tot


def _boot_cell(r: dict) -> str:
    """The row's bootstrap CI: hierarchical (seeds, then images; ``h``), over seeds with at least
    10 seeds (``s``), else a dash (no bootstrap over fewer than 10 seeds)."""
    hb, d = r.get("hierarchical_bootstrap"), r["leaf_minus_target"]
    if hb and not np.isnan(hb["lo"]):
        return f"[{hb['lo']:+.4f}, {hb['hi']:+.4f}] h"
    if not np.isnan(d.get("boot_lo", np.nan)):
        return f"[{d['boot_lo']:+.4f}, {d['boot_hi']:+.4f}] s"
    return f"- ({r['n_seeds']} seeds)"


TABLE_HEAD = ("| cell | transfer | metric | target pretraining | leaf pretraining | leaf - target (paired t 95% CI over seeds) | "
              "p (paired t over seeds) | Holm p (secondary) | bootstrap 95% CI | McNemar p, conditional on these models "
              "(pooled images: leaf-only / target-only) |")

#: What the table's columns mean (under every table of a design's report and of the page).
TABLE_NOTE = ("Headline: the paired t over seeds (a seed is one pair of trained models). Holm p: Holm-adjusted "
              "over the design's secondary rows (the primary row is the one declared test). Bootstrap: `h` "
              "hierarchical (seeds, then images within seeds), `s` over seeds (10 or more seeds only), `-` none "
              "(fewer than 10 seeds and no per-seed image counts recorded). McNemar: exact test on the per-image "
              "outcomes pooled over seeds, conditional on these particular trained models: it says nothing about "
              "another seed and is never the headline.")


def table_lines(rows: list[dict], metrics: tuple[str, ...] | None = None) -> list[str]:
    """Markdown table of the rows (optionally only some metrics)."""
    lines = [TABLE_HEAD, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if metrics is not None and r["metric"] not in metrics:
            continue
        d, mc = r["leaf_minus_target"], r.get("mcnemar")
        mark = "**" if r["primary"] else ""
        mcs = f"{fmt_p(mc['p'])} ({mc['a_only']} / {mc['b_only']})" if mc else "-"
        holm_p = "(primary)" if r["primary"] else fmt_p(r.get("p_holm"))
        lines.append(f"| {mark}{r['cell']}{mark} | {r['transfer']} | {r['metric']} | {fmt_ci(r['target'])} | {fmt_ci(r['leaf'])} | "
                     f"{d['mean']:+.4f} [{d['t_lo']:+.4f}, {d['t_hi']:+.4f}] | {fmt_p(d['p_t'])} | {holm_p} | {_boot_cell(r)} | {mcs} |")
    return lines


def report_markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    prim = summary["primary"]
    rows = summary["table"]
    pr = next((r for r in rows if r["primary"]), None)
    head = [f"# Where fine labels help: design `{summary['design']}`", "",
            f"Contrast: {summary['contrast']}. {len(cfg['seeds'])} seeds paired by seed (same initialisation, splits and cue draw "
            "in both arms). " + TABLE_NOTE, "",
            f"Primary contrast (declared in the config before the run): `{prim['metric']}` after `{prim['protocol']}` transfer"
            + (f" with {prim['transfer_per_class']} images per target class" if prim["transfer_per_class"] else "")
            + f", cell `{prim['cell']}`."]
    if pr is not None:
        d = pr["leaf_minus_target"]
        head.append(f"Result: leaf - target = {d['mean']:+.4f} (paired t over {d['n']} seeds: 95% CI "
                    f"[{d['t_lo']:+.4f}, {d['t_hi']:+.4f}], p = {fmt_p(d['p_t'])}).")
    head += ["", "## Test metrics", "", *table_lines(rows, ("hard_error", "easy_error", "target_error", "worst_subclass_error")),
             "", "## Validation metrics (for anything chosen on data)", "", *table_lines(rows, ("val_hard_error", "val_easy_error", "val_target_error"))]
    if summary.get("cue_counts"):
        head += ["", "## Cue counts (seed " + str(cfg["seeds"][0]) + ", target arm; the leaf arm sees the same images)", "",
                 "```", *[f"{k}: {v}" for k, v in summary["cue_counts"].items()], "```"]
    if summary.get("simulator"):
        head += ["", "## Simulator on the matching axes (preset quick)", "",
                 "Hard-sample error, fine minus coarse pretraining; columns 1 - train_hard_fraction (= rho), rows common_strength.", ""]
        for m, ph in summary["simulator"].items():
            diff = np.asarray(ph["grids"]["fine"], dtype=float) - np.asarray(ph["grids"]["coarse"], dtype=float)
            head += [f"- {m}: " + "; ".join(f"strength {y:g}: " + ", ".join(f"rho {x:g} {v:+.3f}" for x, v in zip(ph["x_values"], row))
                                           for y, row in zip(ph["y_values"], diff))]
    head += ["", f"Compute: {summary['compute_seconds']:.0f} s of training and transfer summed over units.", ""]
    head += [f"![{f}]({f})" for f in summary.get("figures", [])]
    return "\n".join(head) + "\n"


def plot_design(summary: dict[str, Any], out: Path) -> list[str]:
    """The paired difference with its 95% t CI, per cell and transfer, for the main metric (a
    difference of two rates, in [-1, 1]: its bars are cut there, not at 0)."""
    from granularity.utils.figures import pyplot, save_figure

    plt = pyplot()

    metric = summary["primary"]["metric"]
    rows = [r for r in summary["table"] if r["metric"] == metric]
    rows.sort(key=lambda r: (r["cell"], r["transfer"]))
    fig, ax = plt.subplots(figsize=(6.4, max(2.4, 0.32 * len(rows) + 1)))
    ys = np.arange(len(rows))
    d = [r["leaf_minus_target"] for r in rows]
    err = np.maximum(np.nan_to_num([[x["mean"] - max(x["t_lo"], -1.0) for x in d],
                                    [min(x["t_hi"], 1.0) - x["mean"] for x in d]]), 0.0)
    ax.errorbar([x["mean"] for x in d], ys, xerr=err, fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(ys, [f"{r['cell']} | {r['transfer']}" for r in rows], fontsize=7)
    ax.set_xlabel(f"{metric}: leaf - target (95% CI; < 0: fine helps)", fontsize=8)
    ax.set_title(f"design {summary['design']}, {summary['table'][0]['n_seeds']} paired seeds", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out / "paired_difference.png")
    return ["paired_difference.png"]


def where_fine_labels_help(folders: list[Path]) -> str:
    """One page over several finished designs: the primary contrast of each, then every row of
    its primary metric (the paired difference per axis), from their ``results.json``.

    Examples
    --------
    >>> print(where_fine_labels_help([Path("docs/results/bridge")]))  # doctest: +SKIP
    """
    lines = ["# Where fine labels help (leaf minus target pretraining, paired by seed)", "",
             "Negative differences: fine (10-class) pretraining gives the lower error. Bold: the primary contrast "
             "declared in the design's config before it ran. " + TABLE_NOTE + " Each section is generated from the "
             "folder's results.json by granularity.experiments.design_report.where_fine_labels_help (commands in each "
             "folder's COMMAND.md).", ""]
    for folder in folders:
        s = read_json(Path(folder) / "results.json")
        metric = s["primary"]["metric"]
        lines += [f"## `{s['design']}` ({s['table'][0]['n_seeds']} seeds; {folder})", ""]
        lines += table_lines([r for r in s["table"] if r["metric"] == metric])
        lines.append("")
    return "\n".join(lines) + "\n"


def format_design_table(summary: dict[str, Any], metric: str) -> str:
    """The rows of ``metric``: target and leaf arm, their paired difference with its 95% CI and
    p-value over seeds (paired t), Holm-adjusted for the secondary rows; the primary contrast starred."""
    lines = [f"{'cell':<26} {'transfer':<16} {metric + ' target':<20} {'leaf':<16} {'leaf - target [95% CI]':<28} p (seeds)  Holm p"]
    for r in summary["table"]:
        if r["metric"] != metric:
            continue
        d = r["leaf_minus_target"]
        lines.append(f"{('* ' if r['primary'] else '') + r['cell']:<26} {r['transfer']:<16} {fmt_ci(r['target']):<20} "
                     f"{fmt_ci(r['leaf']):<16} {d['mean']:+.4f} [{d['t_lo']:+.4f}, {d['t_hi']:+.4f}]   {fmt_p(d['p_t']):<10} "
                     f"{'-' if r['primary'] else fmt_p(r.get('p_holm'))}")
    return "\n".join(lines)

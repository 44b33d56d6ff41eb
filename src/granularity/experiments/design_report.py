"""Tables, figures and the "where fine labels help" page of a design (see :mod:`.designs`).

Every row is one (cell, transfer, metric): the mean and 95% CI per arm over seeds, the paired
difference leaf minus target (negative = fine pretraining has the lower error) with its
Student-t and bootstrap 95% CIs and paired t-test p-value, and an exact McNemar test on the
per-image outcomes pooled over seeds. The primary contrast declared in the config is marked
and reported first; every other row is secondary (no correction for multiple comparisons).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from granularity.experiments.designs import ARMS, DesignConfig, cells, transfers, unit_dir
from granularity.utils.io import read_json, write_csv_table, write_json
from granularity.utils.stats import fmt_ci, fmt_p, mcnemar_exact, mean_ci, paired_difference


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
        for tname, mode, k in transfers(cfg):
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
                       "strength": cell.cue.strength if cell.cue else None, "transfer": tname, "mode": mode,
                       "transfer_per_class": k, "metric": metric, "n_seeds": len(cfg.seeds),
                       "target": mean_ci(d["target"]), "leaf": mean_ci(d["leaf"]),
                       "leaf_minus_target": paired_difference(d["leaf"], d["target"]),
                       "per_seed": {"target": d["target"], "leaf": d["leaf"]}}
                if d["ok_target"][0] is not None:
                    row["mcnemar"] = mcnemar_exact(np.concatenate(d["ok_leaf"]), np.concatenate(d["ok_target"]))
                row["primary"] = (cell.name, mode, k, metric) == primary
                rows.append(row)
    rows.sort(key=lambda r: not r["primary"])
    return {"design": cfg.design, "config": cfg.to_dict(), "primary": dict(zip(("cell", "mode", "transfer_per_class", "metric"), primary)),
            "contrast": "leaf minus target pretraining (negative: fine labels lower the error)", "table": rows,
            "cue_counts": _cue_counts(cfg, out), "compute_seconds": _compute_seconds(cfg, out)}


def _primary_key(cfg: DesignConfig) -> tuple:
    p = cfg.primary
    cell = p.cell or cells(cfg)[0].name
    k = None if p.mode == "map" else (p.transfer_per_class or max(cfg.transfer_per_class))
    return cell, p.mode, k, p.metric


def _cue_counts(cfg: DesignConfig, out: Path) -> dict[str, Any]:
    got = {}
    for cell in cells(cfg):
        if cell.cue is not None:
            f = unit_dir(out, cell, cfg.seeds[0], "target") / "pretrain.json"
            if f.exists():
                got[cell.name] = read_json(f).get("cue_counts")
    return got


def _compute_seconds(cfg: DesignConfig, out: Path) -> float:
    """Training and transfer seconds summed over every unit (interrupted work not counted)."""
    tot = 0.0
    for cell in cells(cfg):
        for s in cfg.seeds:
            for arm in ARMS:
                d = unit_dir(out, cell, s, arm)
                if (d / "pretrain.json").exists():
                    tot += read_json(d / "pretrain.json")["seconds"]
                tot += sum(read_json(d / t / "result.json")["seconds"] for t, _, _ in transfers(cfg))
    return tot


def write_design_outputs(summary: dict[str, Any], out: Path, simulator: bool = True) -> None:
    write_json(out / "results.json", summary)
    write_csv(out / "results.csv", summary["table"])
    summary["figures"] = plot_design(summary, out)
    if summary["design"] == "bridge-phase":
        from granularity.experiments.phase_bridge import add_simulator

        summary["figures"] += add_simulator(summary, out, simulator)
    write_json(out / "results.json", summary)
    (out / "report.md").write_text(report_markdown(summary))


def write_csv(path: Path, table: list[dict]) -> None:
    cols = ["primary", "cell", "grouping", "rho", "strength", "mode", "transfer_per_class", "metric", "n_seeds",
            "target_mean", "target_ci", "leaf_mean", "leaf_ci", "diff_mean", "diff_t_lo", "diff_t_hi",
            "diff_boot_lo", "diff_boot_hi", "p_t", "mcnemar_leaf_only", "mcnemar_target_only", "mcnemar_p"]
    rows = []
    for r in table:
        d, mc = r["leaf_minus_target"], r.get("mcnemar", {})
        rows.append({**{c: r.get(c) for c in cols[:9]}, "target_mean": r["target"]["mean"], "target_ci": r["target"]["ci"],
                     "leaf_mean": r["leaf"]["mean"], "leaf_ci": r["leaf"]["ci"], "diff_mean": d["mean"],
                     "diff_t_lo": d["t_lo"], "diff_t_hi": d["t_hi"], "diff_boot_lo": d["boot_lo"], "diff_boot_hi": d["boot_hi"],
                     "p_t": d["p_t"], "mcnemar_leaf_only": mc.get("a_only"), "mcnemar_target_only": mc.get("b_only"),
                     "mcnemar_p": mc.get("p")})
    write_csv_table(path, cols, rows)


def table_lines(rows: list[dict], metrics: tuple[str, ...] | None = None) -> list[str]:
    """Markdown table of the rows (optionally only some metrics)."""
    lines = ["| cell | transfer | metric | target pretraining | leaf pretraining | leaf - target (t 95% CI) | bootstrap 95% CI | p (paired t) | McNemar p (leaf-only / target-only) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if metrics is not None and r["metric"] not in metrics:
            continue
        d, mc = r["leaf_minus_target"], r.get("mcnemar")
        mark = "**" if r["primary"] else ""
        mcs = f"{fmt_p(mc['p'])} ({mc['a_only']} / {mc['b_only']})" if mc else "-"
        lines.append(f"| {mark}{r['cell']}{mark} | {r['transfer']} | {r['metric']} | {fmt_ci(r['target'])} | {fmt_ci(r['leaf'])} | "
                     f"{d['mean']:+.4f} [{d['t_lo']:+.4f}, {d['t_hi']:+.4f}] | [{d['boot_lo']:+.4f}, {d['boot_hi']:+.4f}] | "
                     f"{fmt_p(d['p_t'])} | {mcs} |")
    return lines


def report_markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    prim = summary["primary"]
    rows = summary["table"]
    pr = next((r for r in rows if r["primary"]), None)
    head = [f"# Where fine labels help: design `{summary['design']}`", "",
            f"Contrast: {summary['contrast']}. {len(cfg['seeds'])} seeds paired by seed (same initialisation, splits and cue draw "
            "in both arms). 95% CIs of the paired difference (Student t and percentile bootstrap); exact McNemar test on "
            "per-image outcomes pooled over seeds (treats seed x image pairs as independent; read it beside the CI).", "",
            f"Primary contrast (declared in the config before the run): `{prim['metric']}` after `{prim['mode']}` transfer"
            + (f" with {prim['transfer_per_class']} images per target class" if prim["transfer_per_class"] else "")
            + f", cell `{prim['cell']}`."]
    if pr is not None:
        d = pr["leaf_minus_target"]
        head.append(f"Result: leaf - target = {d['mean']:+.4f} (95% CI [{d['t_lo']:+.4f}, {d['t_hi']:+.4f}], p = {fmt_p(d['p_t'])}).")
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
             "declared in the design's config before it ran. Each section is generated from the folder's results.json.", ""]
    for folder in folders:
        s = read_json(Path(folder) / "results.json")
        metric = s["primary"]["metric"]
        lines += [f"## `{s['design']}` ({s['table'][0]['n_seeds']} seeds; {folder})", ""]
        lines += table_lines([r for r in s["table"] if r["metric"] == metric])
        lines.append("")
    return "\n".join(lines) + "\n"


# The designs name the transfer protocol `mode`, with `linear` for `probe` (their results and the
# committed tables use it); `study --design ... --protocol P` runs the design mode DESIGN_MODES[P].
DESIGN_MODES = {"map": "map", "probe": "linear", "finetune": "finetune"}


def format_design_table(summary: dict[str, Any], metric: str) -> str:
    """The rows of ``metric``: target and leaf arm, their paired difference with its 95% CI and
    p-value; the primary contrast starred."""
    lines = [f"{'cell':<26} {'transfer':<16} {metric + ' target':<20} {'leaf':<16} {'leaf - target [95% CI]':<28} p"]
    for r in summary["table"]:
        if r["metric"] != metric:
            continue
        d = r["leaf_minus_target"]
        lines.append(f"{('* ' if r['primary'] else '') + r['cell']:<26} {r['transfer']:<16} {fmt_ci(r['target']):<20} "
                     f"{fmt_ci(r['leaf']):<16} {d['mean']:+.4f} [{d['t_lo']:+.4f}, {d['t_hi']:+.4f}]   {fmt_p(d['p_t'])}")
    return "\n".join(lines)

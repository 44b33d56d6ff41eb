"""The advice's HTML page: the answer, the granularity curve, the table and the rule."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from granularity.experiments.advise_race import BASELINE, METRICS
from granularity.utils.io import write_bytes_atomic


def plot_curve(advice: dict[str, Any], path: Path) -> dict[str, Any]:
    """Test error under the advice's metric (mean ± 95% CI over paired seeds) vs pretraining classes, log x; the
    baseline as a band, eliminated candidates hollow. Returns the plotted data (for tests)."""
    from granularity.utils.figures import clipped_yerr, legend_outside, pyplot, save_figure

    plt = pyplot()
    rows = [r for r in advice["rows"] if r["classes"] > 0]
    base = next(r for r in advice["rows"] if r["candidate"] == BASELINE)
    drawn = []
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    b, bci = base["test_error"]["mean"], _ci(base["test_error"])
    ax.axhspan(max(b - bci, 0.0), b + bci, color="0.85", zorder=0, label="target labels (95% CI)")
    ax.axhline(b, color="0.4", lw=1)
    for r in rows:
        m, ci = r["test_error"]["mean"], _ci(r["test_error"])
        out = r["status"] == "eliminated"
        ax.errorbar([r["classes"]], [m], yerr=clipped_yerr([m], [ci]), fmt="o", mfc="white" if out else None,
                    color="0.55" if out else ("C3" if r["candidate"] == advice["decision"]["selected_on_validation"] else "C0"),
                    capsize=3)
        ax.annotate(r["candidate"], (r["classes"], m), textcoords="offset points", xytext=(4, 4), fontsize=7)
        drawn.append({"candidate": r["candidate"], "x": r["classes"], "y": m, "ci": ci})
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks(sorted({p["x"] for p in drawn}))  # the candidates' class counts, as plain numbers
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("pretraining classes (log scale)")
    ax.set_ylabel(y_label(advice))
    ax.set_title("Granularity curve (hollow: dropped by the race)", fontsize=10)
    legend_outside(ax)
    save_figure(fig, path)  # PNG at 200 dpi, PDF and SVG beside it
    return {"points": drawn, "baseline": {"y": b, "ci": bci}}


def y_label(advice: dict[str, Any]) -> str:
    """The figure's quantity under the advice's metric."""
    metric = advice.get("metric", "error")
    return "target test error" if metric == "error" else f"test {advice.get('metric_description', METRICS[metric])}"


def comparisons_text(advice: dict[str, Any]) -> str:
    """How many comparisons were made, and which one is confirmatory."""
    d = advice["decision"].get("test_diff_vs_target")
    conf = (f"1 confirmatory test on the test split over {d['n']} fresh seeds the race never saw (seeds "
            f"{', '.join(map(str, d['seeds']))}: {advice['decision']['selected_on_validation']} vs the target labels, "
            f"paired by those seeds: {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}], one-sided p = {d['p_one_sided']:.3g})"
            if d else "no confirmatory test (the target labels led the race, or the confirmation has not run)")
    return (f"Comparisons: {advice['comparisons_on_validation']} paired tests on the validation split (racing); {conf}. "
            "Every figure of the table (race seeds) is exploratory.")


def _ci(s: dict[str, float]) -> float:
    return 0.0 if s.get("ci") is None or math.isnan(s["ci"]) else float(s["ci"])


def write_page(advice: dict[str, Any], out: Path) -> Path:
    from granularity.utils.html import Figure, Section, render

    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    curve = figdir / "granularity_curve.png"
    has_runs = any(r["candidate"] == BASELINE for r in advice["rows"])
    if has_runs:
        plot_curve(advice, curve)
    header = ["candidate", "classes", "seeds", "status", "validation error", "test error",
              "test diff vs target [95% CI]", "worst-subclass error"]
    table = [header]
    for r in advice["rows"]:
        d = r.get("test_diff_vs_target")
        w = r.get("worst_subclass_error")
        table.append([r["candidate"], str(r["classes"]), str(r["seeds"]), r["status"], _fmt(r["val_error"]),
                      _fmt(r["test_error"]), f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else "(baseline)",
                      _fmt(w) if w else "-"])
    sec = Section(title="Should I pretrain on finer labels?", source=str(out / "advice.json"))
    metric = advice.get("metric", "error")
    sec.notes += [advice["answer"], f"Metric (selected on the validation split, reported on the test split): {metric} "
                  f"= {advice.get('metric_description', 'target error')}.", f"Stopped: {advice['stopped_because']}. Runs: {advice['runs']}.",
                  comparisons_text(advice), f"Decision rule: {advice['rule']}"]
    sec.tables.append(("Candidates", table))
    if metric_table(advice["rows"]):
        sec.tables.append(("Test error under every metric (exploratory)", metric_table(advice["rows"])))
    if has_runs:
        sec.figures.append(Figure(title="Granularity curve", path=curve,
                                  caption=f"{y_label(advice).capitalize()} (race seeds) vs number of pretraining classes; grey band: target labels.",
                                  details={"rounds": advice["rounds"], "eliminated": advice["eliminated"]}))
    page = out / "index.html"
    text = render([sec], out, "granularity advise")
    write_bytes_atomic(page, lambda fh: fh.write(text.encode("utf-8")))
    return page


def markdown(advice: dict[str, Any]) -> str:
    metric = advice.get("metric", "error")
    lines = [f"# Advice\n\n**{advice['answer']}**\n", f"Metric (selected on validation, reported on test): "
             f"{metric} = {METRICS[metric]}.\n", f"Stopped: {advice['stopped_because']}; {advice['runs']} runs "
             "(confirmation runs included).\n", comparisons_text(advice) + "\n", f"Decision rule (fixed before any run): {advice['rule']}\n",
             "Race seeds (exploratory):\n",
             "| candidate | classes | seeds | status | validation error | test error | test diff vs target (95% CI) | worst subclass error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in advice["rows"]:
        d = r.get("test_diff_vs_target")
        dtxt = f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else "(baseline)"
        w = r.get("worst_subclass_error")
        lines.append(f"| {r['candidate']} | {r['classes']} | {r['seeds']} | {r['status']} | {_fmt(r['val_error'])} | "
                     f"{_fmt(r['test_error'])} | {dtxt} | {_fmt(w) if w else '-'} |")
    return "\n".join(lines + metric_table_lines(advice["rows"])) + "\n"


def metric_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Exploratory: every candidate's test error under every metric its runs report (when the
    data defines more than one, e.g. a planted cue), with the paired difference to the target."""
    metrics = [m for m in METRICS if any(m in r.get("test_by_metric", {}) for r in rows)]
    if not metrics:
        return []
    table = [["candidate", *[f"test {m} (diff vs target [95% CI])" for m in metrics]]]
    for r in rows:
        cells = []
        for m in metrics:
            f = r.get("test_by_metric", {}).get(m)
            d = f.get("test_diff_vs_target") if f else None
            cells.append("-" if f is None else _fmt(f["test_error"]) + (f" ({d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}])" if d else ""))
        table.append([r["candidate"], *cells])
    return table


def metric_table_lines(rows: list[dict[str, Any]]) -> list[str]:
    table = metric_table(rows)
    if not table:
        return []
    return ["", "Test error under every metric (exploratory; " + "; ".join(f"{m} = {d}" for m, d in METRICS.items()) + "):", "",
            "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])] + ["| " + " | ".join(t) + " |" for t in table[1:]]


def _fmt(s: dict[str, float]) -> str:
    return f"{s['mean']:.4f}" + ("" if math.isnan(s["ci"]) else f" ± {s['ci']:.4f}")

"""The report's summaries of simulator results: one run folder (easy/hard error bars, feature
alignment) and one phase-diagram folder (heatmaps and their table)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from granularity.utils.html import Figure, Names, Section
from granularity.utils.stats import fmt_ci


PROTOCOL_ORDER = ["map", "probe", "finetune"]


def protocols(errors: Mapping[str, Any]) -> list[str]:
    protos = list(dict.fromkeys(p for src in errors.values() for p in src))
    return sorted(protos, key=lambda p: PROTOCOL_ORDER.index(p) if p in PROTOCOL_ORDER else 99)


def errors_table(errors: Mapping[str, Any]) -> list[list[str]]:
    rows = [["pretraining", "protocol", "easy error", "hard error", "seeds"]]
    for src, protos in errors.items():
        for proto in protocols({src: protos}):
            e = protos[proto]
            rows.append([src, proto, fmt_ci(e["easy"]), fmt_ci(e["hard"]), str(e["hard"].get("n", ""))])
    return rows


def section_simulate(folder: Path, figdir: Path, names: Names) -> Section:
    from granularity.theory.experiment import summarise_run
    from granularity.theory.plots import plot_alignment, plot_errors

    summary = summarise_run(folder)
    result, config, recs = summary["result"], summary["config"], summary["records"]
    sec = Section(f"Simulator run {result.get('name', folder.name)!r}", str(folder))
    details = {"config": config, "seeds": result.get("seeds"), "config_hash": result.get("config_hash")}
    n = len(result.get("seeds", []))
    p = plot_errors(result, figdir / names(folder.name, "errors"))
    sec.figures.append(Figure(
        "Target error on easy and hard test samples", p,
        f"Coarse vs fine pretraining, transferred to the target task by each protocol; mean and 95% CI over {n} seeds.",
        details, errors_table(result["errors"])))
    if recs and all("alignment" in r for r in recs):
        p = plot_alignment(recs, figdir / names(folder.name, "alignment"))
        sec.figures.append(Figure(
            "Feature alignment during pretraining", p,
            f"max over own-class neurons of <w, v> for common (level 1) and fine features; mean and 95% CI band over {len(recs)} seeds.",
            details))
    return sec


def section_phase(folder: Path, figdir: Path, names: Names) -> Section:
    from granularity.theory.phase import summarise_phase
    from granularity.theory.plots import phase_panels, plot_phase

    summary = summarise_phase(folder)
    phase, spec, cells, missing = summary["phase"], summary["spec"], summary["cells"], summary["missing"]
    sec = Section(f"Phase diagram {phase['y_key']} x {phase['x_key']}", str(folder))
    if not phase.get("grids"):
        sec.notes.append("No finished cells yet.")
        return sec
    if missing:
        sec.notes.append(f"{len(missing)} cells have no result (hatched grey, 'missing'): {'; '.join(missing)}.")
    p = plot_phase(phase, figdir / names(folder.name, "phase"))
    sec.figures.append(Figure(
        f"Hard-sample error ({phase['protocol']})", p,
        f"Each cell: mean over {phase.get('seeds')} seeds of the hard-sample target error; the right panel is coarse - fine.",
        {"spec": spec, "cells": cells}, phase_table(phase),
        {"kind": "heatmaps", "x_key": phase["x_key"], "x_values": phase["x_values"], "y_key": phase["y_key"],
         "y_values": phase["y_values"], "panels": [{**pnl, "values": pnl["values"].tolist()} for pnl in phase_panels(phase)]}))
    return sec


def phase_table(phase: Mapping[str, Any]) -> list[list[str]]:
    rows = [[phase["y_key"], phase["x_key"], *[f"{src} hard error" for src in phase["grids"]]]]
    for r, yv in enumerate(phase["y_values"]):
        for c, xv in enumerate(phase["x_values"]):
            vals = []
            for src in phase["grids"]:
                m = phase["grids"][src][r][c]
                ci = phase.get("ci", {}).get(src, [[math.nan]])[r][c] if phase.get("ci") else math.nan
                vals.append("missing" if m is None or math.isnan(m) else fmt_ci({"mean": m, "ci": ci}))
            rows.append([str(yv), str(xv), *vals])
    return rows

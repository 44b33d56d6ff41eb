"""A self-contained HTML report from stored results.

Inputs (any mix): simulate run folders (``result.json`` + ``seeds/``), phase-diagram folders
(``phase_spec.json``), results stores of sweeps (``index.sqlite``), real-data study folders
(``study.json`` + ``results.json`` of :mod:`granularity.experiments.study`) and single real-data
transfer run folders. Every figure is drawn from the stored results, written as a PNG under
``<out>/figures/`` and embedded in ``<out>/index.html`` as a base64 data URI, with its numbers
(mean and 95% CI over seeds) and, in a collapsible block, the exact resolved configs and seeds.

From a store, a simulate sweep over two axes gives phase-diagram heatmaps (mean over seeds per
cell, one per protocol), one axis gives error curves, and small grids (<= 4 cells) also give
the easy/hard bars and alignment curves per cell. A transfer sweep gives the real-data U-curve
(target error against the number of pretraining classes, per label-function family) and
hard-sample bars (rare vs common subclasses) when the runs have rare classes. A study folder
gives the U-curve (target error against the number of pretraining classes per family), easy vs
hard test-sample bars and the rare-subclass bars, from its ``results.json``.
"""

from __future__ import annotations

from contextlib import contextmanager

import base64
import html
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError
from granularity.utils.io import check_writable, read_json
from granularity.utils.stats import fmt_ci, mean_ci

PROTOCOL_ORDER = ["map", "probe", "finetune"]


@dataclass
class Figure:
    title: str
    path: Path
    caption: str
    details: Any = None  # JSON-able: the configs and seeds behind the figure
    table: list[list[str]] | None = None  # first row = header
    data: Any = None  # what the figure draws, as its plotting function drew it (for tests and audits)


@dataclass
class Section:
    title: str
    source: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[list[str]]]] = field(default_factory=list)


class _Names:
    """Unique, file-safe figure names."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, *parts: str) -> str:
        base = re.sub(r"[^A-Za-z0-9.=+-]+", "_", "_".join(p for p in parts if p)).strip("_")[:90] or "figure"
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name + ".png"


def _protocols(errors: Mapping[str, Any]) -> list[str]:
    protos = list(dict.fromkeys(p for src in errors.values() for p in src))
    return sorted(protos, key=lambda p: PROTOCOL_ORDER.index(p) if p in PROTOCOL_ORDER else 99)


def _errors_table(errors: Mapping[str, Any]) -> list[list[str]]:
    rows = [["pretraining", "protocol", "easy error", "hard error", "seeds"]]
    for src, protos in errors.items():
        for proto in _protocols({src: protos}):
            e = protos[proto]
            rows.append([src, proto, fmt_ci(e["easy"]), fmt_ci(e["hard"]), str(e["hard"].get("n", ""))])
    return rows


# ---- inputs ---------------------------------------------------------------------------------
@contextmanager
def _reading(path: Path, kind: str):
    """Files of a results folder that do not have the structure granularity writes (edited by
    hand, written by another program, cut short) end in one line naming the folder."""
    import pickle
    import zipfile

    try:
        yield
    except GranularityError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, EOFError, OSError,
            pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise GranularityError(
            f"The RESULTS entry {str(path)!r} ({kind} folder) holds malformed files ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}); it was not written by granularity or is corrupt."
        ) from None


def detect(path: Path) -> str:
    """``simulate`` | ``phase`` | ``store`` | ``study`` | ``transfer`` for a results folder."""
    if not path.is_dir():
        raise GranularityError(f"The RESULTS entry {str(path)!r} is not a folder; give run folders, phase folders or sweep stores.")
    from granularity.sweeps.store import is_store
    from granularity.theory.experiment import is_run_folder
    from granularity.theory.phase import is_phase_folder

    if is_store(path):
        return "store"
    if is_phase_folder(path):
        return "phase"
    if (path / "study.json").exists():
        if not (path / "results.json").exists():
            raise GranularityError(f"The study folder {str(path)!r} has no results.json yet; run the study to the end first.")
        return "study"
    if is_run_folder(path):
        return "simulate"
    if (path / "result.json").exists():
        res = read_json(path / "result.json")
        if isinstance(res, dict) and "target_error" in res:  # a foreign result.json: "not a results folder" below
            return "transfer"
    raise GranularityError(
        f"The RESULTS entry {str(path)!r} is not a simulate run folder (result.json), a phase folder "
        "(phase_spec.json), a study folder (study.json) or a results store (index.sqlite)."
    )


def section_simulate(folder: Path, figdir: Path, names: _Names) -> Section:
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
        details, _errors_table(result["errors"])))
    if recs and all("alignment" in r for r in recs):
        p = plot_alignment(recs, figdir / names(folder.name, "alignment"))
        sec.figures.append(Figure(
            "Feature alignment during pretraining", p,
            f"max over own-class neurons of <w, v> for common (level 1) and fine features; mean and 95% CI band over {len(recs)} seeds.",
            details))
    return sec


def section_phase(folder: Path, figdir: Path, names: _Names) -> Section:
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
        {"spec": spec, "cells": cells}, _phase_table(phase),
        {"kind": "heatmaps", "x_key": phase["x_key"], "x_values": phase["x_values"], "y_key": phase["y_key"],
         "y_values": phase["y_values"], "panels": [{**pnl, "values": pnl["values"].tolist()} for pnl in phase_panels(phase)]}))
    return sec


def _phase_table(phase: Mapping[str, Any]) -> list[list[str]]:
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


def section_transfer_run(folder: Path) -> Section:
    res = read_json(folder / "result.json")
    sec = Section(f"Transfer run {folder.name!r}", str(folder))
    # "transfer_mode": the protocol's key in result files of before the one vocabulary
    keys = ["source", "num_source_classes", "target_level", "protocol", "transfer_mode", "target_error", "rare_error",
            "common_error", "hierarchy_hash", "seed"]
    sec.tables.append(("Result", [["field", "value"]] + [[k, str(res[k])] for k in keys if k in res]))
    return sec


def section_study(folder: Path, figdir: Path, names: _Names) -> Section:
    """The real-data study: U-curve, easy vs hard samples, rare subclasses, from results.json."""
    from granularity.experiments.study import _folder
    from granularity.report.figures import plot_grouped_bars, plot_lines

    res = read_json(folder / "results.json")
    cfg = res.get("config") or read_json(folder / "study.json")
    table = res["table"]
    seeds = cfg.get("seeds", [])
    run = cfg.get("run", cfg)  # study.json files of before the study held a transfer config: the keys at the top
    sec = Section(f"Real-data study {folder.name!r} ({run.get('dataset')}, target level {run.get('target')})", str(folder))
    hs = res.get("hard_samples", {})
    sec.notes.append(f"{len(table)} arms x {len(seeds)} seeds {seeds}; hard test samples: {hs.get('n')} "
                     f"({hs.get('rule', '')}); hierarchy hash {res.get('hierarchy_hash')}.")
    runs = {}
    for row in table:
        for seed in seeds:
            p = folder / "runs" / _folder(row["arm"]) / f"seed{seed}" / "config.json"
            if p.exists():
                runs[f"{row['arm']}/seed{seed}"] = read_json(p)
    details = {"study_config": cfg, "seeds": seeds, "hard_samples": hs, "hierarchy_hash": res.get("hierarchy_hash"),
               "run_configs": runs}

    def summ(row: Mapping[str, Any], key: str) -> str:
        return fmt_ci(row[key]) if isinstance(row.get(key), Mapping) and row[key].get("n") else ""

    rows = [["arm", "family", "pretraining classes", "target error", "hard error", "easy error",
             "target error - baseline", "rare error", "common error"]]
    for r in table:
        rows.append([r["arm"], r["family"], str(r["num_source_classes"]), summ(r, "target_error"), summ(r, "hard_error"),
                     summ(r, "easy_error"), summ(r, "target_error_minus_baseline"), summ(r, "rare_error"),
                     summ(r, "common_error")])
    main = [r for r in table if r["family"] != "rare"]
    fams: dict[str, list[Mapping[str, Any]]] = {}
    for r in main:
        fams.setdefault("hierarchy" if r["family"] in ("target", "hierarchy") else r["family"], []).append(r)
    series = {fam: ([r["num_source_classes"] for r in rs], [r["target_error"]["mean"] for r in rs],
                    [r["target_error"]["ci"] for r in rs]) for fam, rs in fams.items()}
    p = plot_lines(series, figdir / names(folder.name, "u_curve"), xlabel="number of pretraining classes",
                   ylabel="target test error", logx=True,
                   title=f"Target error vs pretraining granularity ({len(seeds)} seeds, 95% CI)")
    sec.figures.append(Figure("U-curve: target error against pretraining granularity", p,
                              f"Mean and 95% CI band over {len(seeds)} seeds per arm, one line per label-function family "
                              "(hierarchy levels include the target labels themselves).", details, rows))
    bars = {r["arm"]: {k: (r[f"{k}_error"]["mean"], r[f"{k}_error"]["ci"]) for k in ("easy", "hard")
                       if isinstance(r.get(f"{k}_error"), Mapping)} for r in main}
    p = plot_grouped_bars(bars, figdir / names(folder.name, "easy_hard"), ylabel="target test error",
                          title=f"Easy vs hard test samples ({hs.get('n')} hard), 95% CI")
    sec.figures.append(Figure("Hard samples: target error on easy vs hard test samples", p,
                              f"Hard samples: {hs.get('rule', 'see the study')}; mean and 95% CI over {len(seeds)} seeds.",
                              details))
    rare = [r for r in table if r["family"] == "rare" and isinstance(r.get("rare_error"), Mapping)]
    if rare:
        bars = {r["arm"]: {"other subclasses": (r["common_error"]["mean"], r["common_error"]["ci"]),
                           "rare subclasses": (r["rare_error"]["mean"], r["rare_error"]["ci"])} for r in rare}
        p = plot_grouped_bars(bars, figdir / names(folder.name, "rare"), ylabel="target test error",
                              title="Rare subclasses vs the others (95% CI)")
        sec.figures.append(Figure("Rare subclasses", p, f"Rare classes {cfg.get('rare')}; mean and 95% CI over "
                                  f"{len(seeds)} seeds.", details))
    return sec


# ---- stores ---------------------------------------------------------------------------------
# A store's runs are shared by every sweep that expands into their configs, so a sweep's cells
# are keyed on its own axis keys read from each run's resolved config (never on the params some
# other sweep registered); every cell of the grid is kept, a cell without a finished run shows as
# missing. Each figure's ``data`` is the exact structure its plotting function drew.
def _cells(rows: list[dict[str, Any]], axis_keys: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    from granularity.utils.config import get_dotted

    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = tuple(json.dumps(get_dotted(r["config"], k)) for k in axis_keys)
        cells.setdefault(key, []).append(r)
    return cells


def _ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r["status"] == "ok"]


def _cell_label(axis_keys: list[str], key: tuple) -> str:
    return ", ".join(f"{k}={json.loads(v)}" for k, v in zip(axis_keys, key)) or "all runs"


def _missing_note(runs: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return "no finished run (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"


def _note_missing(sec: Section, all_keys: list[str], cells: Mapping[tuple, list[dict[str, Any]]]) -> None:
    missing = [k for k, runs in cells.items() if not _ok(runs)]
    if missing:
        failed = all(r["status"] == "failed" for k in missing for r in cells[k])
        sec.notes.append(f"{len(missing)} of {len(cells)} cells have no finished run"
                         + (" (all runs failed)" if failed else " (runs failed or not run yet)")
                         + "; they are shown as missing (hatched grey in heatmaps, left out of curves): "
                         + "; ".join(_cell_label(all_keys, k) for k in missing) + ".")


def _cell_details(axis_keys: list[str], cells: Mapping[tuple, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [
        {"cell": {k: json.loads(v) for k, v in zip(axis_keys, key)},
         "runs": [{"run_id": r["run_id"], "status": r["status"], "seed": (r["params"] or {}).get("seed"),
                   "config": r["config"]} for r in runs]}
        for key, runs in cells.items()
    ]


def _sim_aggregate(runs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """A result.json-like dict (errors with mean/CI over the runs' seeds) from one cell's runs."""
    errors: dict[str, Any] = {}
    seeds = [(r["params"] or {}).get("seed") for r in runs]
    metrics = [r["metrics"] or {} for r in runs]
    names = sorted({k for m in metrics for k in m if k.count(".") == 2 and not k.startswith("align.")})
    for key in names:
        src, proto, kind = key.split(".")
        vals = [m[key] for m in metrics if m.get(key) is not None]
        errors.setdefault(src, {}).setdefault(proto, {})[kind] = {**mean_ci(vals), "values": vals}
    return {"name": name, "errors": errors, "seeds": seeds}


def section_store(root: Path, figdir: Path, names: _Names, protocol: str | None = None) -> list[Section]:
    from granularity.sweeps.store import ResultsStore

    sections = []
    with ResultsStore(root, create=False) as store:
        sweeps = store.sweeps()
        if not sweeps:
            sec = Section(f"Results store {root.name!r}", str(root))
            sec.notes.append("The store holds no sweep.")
            return [sec]
        for sw in sweeps:
            rows = store.rows(sweep=sw["name"])
            sec = Section(f"Sweep {sw['name']!r} ({sw['kind']})", f"{root} (sweep {sw['name']!r})")
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            sec.notes.append(f"{len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                             + f"; seeds {sw['seeds']}; axes " + (", ".join("+".join(g) for g in sw["axes"]) or "none") + ".")
            failed = [r for r in rows if r["status"] == "failed"]
            if failed:
                sec.tables.append(("Failed runs", [["run", "axis values and seed", "error"]] + [
                    [r["run_id"], json.dumps(r["params"]), r["error"] or ""] for r in failed]))
            if not _ok(rows):
                sec.notes.append("No finished runs yet.")
            elif sw["kind"] == "simulate":
                _store_simulate(sec, sw, rows, root, figdir, names, protocol)
            elif sw["kind"] == "transfer":
                _store_transfer(sec, sw, rows, figdir, names)
            sec.tables.insert(0, ("Spec", [["sweep file", json.dumps(sw["spec"], sort_keys=True)]]))
            sections.append(sec)
    return sections


def _sim_sources(ok: list[dict[str, Any]], aggs: Mapping[tuple, Mapping[str, Any]]) -> list[str]:
    """Pretraining sources in the runs' own order (``transfer.sources``), then any other stored."""
    from granularity.utils.config import get_dotted

    listed = [str(s) for r in ok for s in (get_dotted(r["config"], "transfer.sources") or [])]
    stored = [s for a in aggs.values() for s in a["errors"]]
    return [s for s in dict.fromkeys(listed + stored) if s in set(stored)]


def _sim_table(all_keys, cells, aggs, sources, proto0) -> list[list[str]]:
    table = [[*all_keys, "seeds", *[f"{s} {proto0} hard" for s in sources], *[f"{s} {proto0} easy" for s in sources],
              "note"]]
    for key, runs in cells.items():
        row = [str(json.loads(v)) for v in key]
        agg = aggs.get(key)
        if agg is None:
            table.append(row + ["0"] + [""] * (2 * len(sources)) + [_missing_note(runs)])
            continue
        row.append(str(len(agg["seeds"])))
        for kind in ("hard", "easy"):
            for s in sources:
                e = agg["errors"].get(s, {}).get(proto0, {}).get(kind)
                row.append(fmt_ci(e) if e else "")
        table.append(row + [""])
    return table


def _store_simulate(sec: Section, sw: Mapping[str, Any], rows: list[dict[str, Any]], root: Path, figdir: Path,
                    names: _Names, protocol: str | None) -> None:
    # one key per axis (a zip group is drawn against its first key)
    axis_keys = [group[0] for group in sw["axes"]]
    all_keys = [k for group in sw["axes"] for k in group]
    cells = _cells(rows, all_keys)
    aggs = {key: _sim_aggregate(_ok(runs), _cell_label(all_keys, key)) for key, runs in cells.items() if _ok(runs)}
    protos = _protocols({s: p for a in aggs.values() for s, p in a["errors"].items()})
    if protocol is not None:
        if protocol not in protos:
            raise GranularityError(f"The '--protocol' option must be one of the stored protocols {protos}. Got {protocol!r} instead.")
        protos = [protocol]
    sources = _sim_sources(_ok(rows), aggs)
    n_txt = "/".join(str(n) for n in sorted({len(v["seeds"]) for v in aggs.values()}))
    details = _cell_details(all_keys, cells)
    _note_missing(sec, all_keys, cells)
    sec.tables.append((f"Per cell (mean ± 95% CI over seeds, protocol {protos[0]})",
                       _sim_table(all_keys, cells, aggs, sources, protos[0])))
    if len(axis_keys) == 2:
        _sim_heatmaps(sec, sw, all_keys, axis_keys, cells, aggs, sources, protos, n_txt, details, figdir, names)
    elif len(axis_keys) == 1:
        _sim_curves(sec, sw, axis_keys[0], cells, aggs, sources, protos, n_txt, details, figdir, names)
    if len(cells) <= 4:  # bars and alignment curves per cell for small grids (a heatmap says it all for big ones)
        _sim_cell_figures(sec, sw, all_keys, cells, aggs, root, figdir, names)


def _sim_heatmaps(sec, sw, all_keys, axis_keys, cells, aggs, sources, protos, n_txt, details, figdir, names) -> None:
    from granularity.theory.plots import phase_panels, plot_phase

    xk, yk = axis_keys
    xi, yi = all_keys.index(xk), all_keys.index(yk)
    xs = _sorted_values(list(dict.fromkeys(json.loads(k[xi]) for k in cells)))
    ys = _sorted_values(list(dict.fromkeys(json.loads(k[yi]) for k in cells)))
    pos = {json.dumps(v): i for i, v in enumerate(xs)}, {json.dumps(v): i for i, v in enumerate(ys)}
    for proto in protos:
        grids = {src: [[math.nan] * len(xs) for _ in ys] for src in sources}
        cis = {src: [[math.nan] * len(xs) for _ in ys] for src in sources}
        for key, agg in aggs.items():
            c, r = pos[0][key[xi]], pos[1][key[yi]]
            for src in sources:
                e = agg["errors"].get(src, {}).get(proto, {}).get("hard")
                if e is not None:
                    grids[src][r][c], cis[src][r][c] = e["mean"], e["ci"]
        grids = {s: g for s, g in grids.items() if any(not math.isnan(v) for row in g for v in row)}
        phase = {"x_key": xk, "x_values": xs, "y_key": yk, "y_values": ys, "protocol": proto,
                 "seeds": n_txt, "grids": grids, "ci": {s: cis[s] for s in grids}}
        p = plot_phase(phase, figdir / names(sw["name"], "phase", proto))
        data = {"kind": "heatmaps", "x_key": xk, "x_values": xs, "y_key": yk, "y_values": ys,
                "panels": [{**pnl, "values": pnl["values"].tolist()} for pnl in phase_panels(phase)]}
        sec.figures.append(Figure(
            f"Phase diagram: hard-sample error ({proto})", p,
            f"Rows {yk}, columns {xk}; each cell is the mean over {n_txt} seeds (one run per seed) of the "
            "hard-sample target error; the last panel is the coarsest minus the finest source; hatched grey "
            "cells have no finished run. 95% CIs in the table.",
            details, _phase_table(phase), data))


def _sim_curves(sec, sw, xk, cells, aggs, sources, protos, n_txt, details, figdir, names) -> None:
    if not all(isinstance(json.loads(k[0]), (int, float)) and not isinstance(json.loads(k[0]), bool) for k in cells):
        return
    for proto in protos:
        series = {}
        for src in sources:
            for kind in ("hard", "easy"):
                pts = [(json.loads(k[0]), a["errors"][src][proto][kind]) for k, a in aggs.items()
                       if kind in a["errors"].get(src, {}).get(proto, {})]
                if pts:
                    series[f"{src}, {kind}"] = ([x for x, _ in pts], [e["mean"] for _, e in pts], [e["ci"] for _, e in pts])
        if series:
            p, data = _plot_lines(series, figdir / names(sw["name"], "curve", proto), xlabel=xk,
                                  ylabel="target test error", title=f"{proto}: error vs {xk} ({n_txt} seeds, 95% CI)")
            sec.figures.append(Figure(f"Target error against {xk} ({proto})", p,
                                      f"Mean and 95% CI band over {n_txt} seeds per point.", details, None, data))


def _sim_cell_figures(sec, sw, all_keys, cells, aggs, root, figdir, names) -> None:
    from granularity.sweeps.store import run_folder
    from granularity.theory.experiment import load_records
    from granularity.theory.plots import plot_alignment, plot_errors

    for key, agg in aggs.items():
        label = _cell_label(all_keys, key)
        ok = _ok(cells[key])
        cell_details = _cell_details(all_keys, {key: ok})
        p = plot_errors(agg, figdir / names(sw["name"], label, "errors"))
        sec.figures.append(Figure(f"Easy and hard target error — {label}", p,
                                  f"Mean and 95% CI over {len(agg['seeds'])} seeds (one sweep run each).",
                                  cell_details, _errors_table(agg["errors"]), {"kind": "error bars", "errors": agg["errors"]}))
        recs = []
        for r in ok:
            recs += load_records(run_folder(root, r["run_id"]), [(r["params"] or {}).get("seed")])
        if recs and all("alignment" in rec for rec in recs):
            p = plot_alignment(recs, figdir / names(sw["name"], label, "alignment"))
            sec.figures.append(Figure(f"Feature alignment — {label}", p,
                                      f"Mean and 95% CI band over {len(recs)} seeds.", cell_details))


def _sorted_values(values: list[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:
        return values


def _plot_lines(series, path, **kw) -> tuple[Path, dict[str, Any]]:
    """Draw ``label -> (x, mean, ci)`` and return the path and the drawn data (points sorted by x)."""
    from granularity.report import figures

    drawn = {}
    for label, (x, mean, ci) in series.items():
        order = sorted(range(len(x)), key=lambda i: float(x[i]))
        drawn[label] = {"x": [float(x[i]) for i in order], "mean": [float(mean[i]) for i in order],
                        "ci": [float(ci[i]) for i in order]}
    return figures.plot_lines(series, path, **kw), {"kind": "lines", "series": drawn}


def _u_lines(sw: Mapping[str, Any], all_keys: list[str], aggs: Mapping[tuple, Mapping[str, Any]]) -> dict[str, list]:
    """U-curve lines of a transfer sweep: one per label-function family and combination of the
    other axes (those not varying with ``source``), so a line joins only runs that agree on every
    other axis. The target-labels baseline is folded onto the hierarchy line (as in the study
    report) unless that line already has a point at its number of classes."""
    source_group = next((g for g in sw["axes"] if "source" in g), [])
    others = [k for k in all_keys if k not in source_group]
    lines: dict[tuple, list] = {}
    for key, agg in aggs.items():
        if agg["n_cls"] is None:
            continue
        rest = tuple(key[all_keys.index(k)] for k in others)
        lines.setdefault((agg["family"], rest), []).append((float(agg["n_cls"]), agg["target"], key))
    folded: dict[tuple, list] = {}
    for (fam, rest), pts in lines.items():
        if fam == "target":
            hier = lines.get(("hierarchy", rest), [])
            if not {x for x, _, _ in pts} & {x for x, _, _ in hier}:
                fam = "hierarchy"
        folded.setdefault((fam, rest), []).extend(pts)
    suffix = lambda rest: ", ".join(f"{k}={json.loads(v)}" for k, v in zip(others, rest))  # noqa: E731
    return {fam + (f", {suffix(rest)}" if others else ""): pts for (fam, rest), pts in folded.items()}


def _transfer_aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ms = [r["metrics"] or {} for r in runs]
    return {"n": len(runs), "n_cls": ms[0].get("num_source_classes"), "family": str(ms[0].get("source_family", "source")),
            "target": mean_ci([m.get("target_error") for m in ms if m.get("target_error") is not None]),
            "rare": mean_ci([m["rare_error"] for m in ms if m.get("rare_error") is not None]),
            "common": mean_ci([m["common_error"] for m in ms if m.get("common_error") is not None])}


def _store_transfer(sec: Section, sw: Mapping[str, Any], rows: list[dict[str, Any]], figdir: Path, names: _Names) -> None:
    from granularity.report.figures import plot_grouped_bars

    all_keys = [k for group in sw["axes"] for k in group]
    cells = _cells(rows, all_keys)
    details = _cell_details(all_keys, cells)
    aggs = {key: _transfer_aggregate(_ok(runs)) for key, runs in cells.items() if _ok(runs)}
    _note_missing(sec, all_keys, cells)
    table = [[*all_keys, "seeds", "source classes", "target error", "rare error", "common error", "note"]]
    bars: dict[str, dict[str, tuple[float, float]]] = {}
    for key, runs in cells.items():
        a = aggs.get(key)
        if a is None:
            table.append([*(str(json.loads(v)) for v in key), "0", "", "", "", "", _missing_note(runs)])
            continue
        table.append([*(str(json.loads(v)) for v in key), str(a["n"]), str(a["n_cls"]), fmt_ci(a["target"]),
                      fmt_ci(a["rare"]) if a["rare"]["n"] else "", fmt_ci(a["common"]) if a["common"]["n"] else "", ""])
        if a["rare"]["n"]:
            bars[_cell_label(all_keys, key)] = {"rare subclasses": (a["rare"]["mean"], a["rare"]["ci"]),
                                                "common subclasses": (a["common"]["mean"], a["common"]["ci"])}
    sec.tables.append(("Per cell (mean ± 95% CI over seeds)", table))
    u = _u_lines(sw, all_keys, aggs)
    if any(len({x for x, _, _ in pts}) >= 2 for pts in u.values()):
        series = {label: ([x for x, _, _ in pts], [e["mean"] for _, e, _ in pts], [e["ci"] for _, e, _ in pts])
                  for label, pts in u.items()}
        p, data = _plot_lines(series, figdir / names(sw["name"], "u_curve"), xlabel="pretraining classes",
                              ylabel="target test error", title="Target error vs pretraining granularity (95% CI)", logx=True)
        sec.figures.append(Figure("U-curve: target error against pretraining granularity", p,
                                  "Mean and 95% CI band over seeds; one line per label-function family and combination "
                                  "of the other axes (the target-labels baseline is on the hierarchy line).", details,
                                  None, data))
    if bars:
        p = plot_grouped_bars(bars, figdir / names(sw["name"], "hard_samples"), ylabel="target test error",
                              title="Hard samples: rare vs common subclasses (95% CI)")
        sec.figures.append(Figure("Hard samples: error on rare vs common subclasses", p,
                                  "Mean and 95% CI over seeds.", details, None, {"kind": "bars", "groups": bars}))


# ---- HTML -----------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{margin:1.5em 0;padding:.5em;border:1px solid #eee;border-radius:6px}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.9em;color:#444;margin:.4em 0}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}
details{margin:.4em 0}summary{cursor:pointer;color:#0645ad}
pre{background:#f8f8f8;padding:.6em;overflow:auto;max-height:30em;font-size:.8em}
.src{color:#666;font-size:.85em}.note{color:#444}
"""


def _table_html(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_html(fig: Figure, out: Path) -> str:
    data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
    rel = fig.path.relative_to(out).as_posix()
    parts = [
        "<figure>",
        f"<h3>{html.escape(fig.title)}</h3>",
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(fig.title)}" data-file="{html.escape(rel)}">',
        f"<figcaption>{html.escape(fig.caption)} (PNG: <code>{html.escape(rel)}</code>)</figcaption>",
    ]
    if fig.table:
        parts.append(_table_html(fig.table))
    if fig.details is not None:
        text = json.dumps(fig.details, indent=2, sort_keys=True, default=str)
        parts.append(f"<details><summary>Resolved configs and seeds behind this figure</summary><pre>{html.escape(text)}</pre></details>")
    parts.append("</figure>")
    return "\n".join(parts)


def render(sections: list[Section], out: Path, title: str) -> str:
    import granularity

    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='src'>granularity {html.escape(granularity.__version__)}, built {time.strftime('%Y-%m-%d %H:%M:%S')}; "
            "every figure is drawn from stored results; error bars and bands are 95% confidence intervals over seeds.</p>"]
    if len(sections) > 1:
        body.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections)) + "</ul>")
    for i, sec in enumerate(sections):
        body.append(f"<section id='s{i}'><h2>{html.escape(sec.title)}</h2><p class='src'>from <code>{html.escape(sec.source)}</code></p>")
        body += [f"<p class='note'>{html.escape(n)}</p>" for n in sec.notes]
        for caption, rows in sec.tables:
            if caption == "Spec":
                body.append(f"<details><summary>Sweep file</summary><pre>{html.escape(rows[0][1])}</pre></details>")
            else:
                body.append(f"<h4>{html.escape(caption)}</h4>{_table_html(rows)}")
        body += [_figure_html(f, out) for f in sec.figures]
        body.append("</section>")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def collect_sections(results: Sequence[str | Path], out: str | Path, *, protocol: str | None = None) -> list[Section]:
    """The report's sections from result folders, figures drawn into ``<out>/figures``; each
    :class:`Figure` holds the PNG path, its table and ``data`` (what it draws)."""
    if not results:
        raise GranularityError("The 'RESULTS' argument needs at least one results folder.")
    paths = [Path(p) for p in results]
    kinds = [detect(p) for p in paths]  # every input checked before anything is drawn
    figdir = check_writable(out) / "figures"
    figdir.mkdir(exist_ok=True)
    names = _Names()
    sections: list[Section] = []
    for path, kind in zip(paths, kinds):
        with _reading(path, kind):
            if kind == "simulate":
                sections.append(section_simulate(path, figdir, names))
            elif kind == "phase":
                sections.append(section_phase(path, figdir, names))
            elif kind == "store":
                sections += section_store(path, figdir, names, protocol)
            elif kind == "study":
                sections.append(section_study(path, figdir, names))
            else:
                sections.append(section_transfer_run(path))
    return sections


def build_report(results: Sequence[str | Path], out: str | Path, *, title: str = "granularity report",
                 protocol: str | None = None) -> Path:
    """Build ``<out>/index.html`` (self-contained) and ``<out>/figures/*.png`` from result folders.

    Parameters
    ----------
    results : paths
        Simulate run folders, phase folders, results stores (sweeps), study folders, transfer run folders.
    out : path
        Report folder.
    protocol : str, optional
        Only this transfer protocol in store heatmaps (default: every stored protocol).

    Returns
    -------
    Path
        The HTML file.

    Examples
    --------
    >>> build_report(["runs/sweeps/phase"], "runs/report")  # doctest: +SKIP
    """
    out = Path(out)
    sections = collect_sections(results, out, protocol=protocol)
    page = out / "index.html"
    from granularity.utils.io import write_bytes_atomic

    text = render(sections, out, title)
    write_bytes_atomic(page, lambda fh: fh.write(text.encode("utf-8")))
    return page

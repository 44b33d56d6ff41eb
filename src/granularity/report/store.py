"""The report's summary of a results store: one section per sweep. A simulate sweep over two axes
gives phase-diagram heatmaps (one per protocol), over one axis error curves, and small grids
(<= 4 cells) the easy/hard bars and alignment curves per cell; a transfer sweep gives the
real-data U-curve and the rare vs common subclass bars."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError
from granularity.report.simulate import errors_table, phase_table, protocols
from granularity.utils.html import Figure, Names, Section
from granularity.utils.stats import fmt_ci, mean_ci


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


def section_store(root: Path, figdir: Path, names: Names, protocol: str | None = None) -> list[Section]:
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
                    names: Names, protocol: str | None) -> None:
    # one key per axis (a zip group is drawn against its first key)
    axis_keys = [group[0] for group in sw["axes"]]
    all_keys = [k for group in sw["axes"] for k in group]
    cells = _cells(rows, all_keys)
    aggs = {key: _sim_aggregate(_ok(runs), _cell_label(all_keys, key)) for key, runs in cells.items() if _ok(runs)}
    protos = protocols({s: p for a in aggs.values() for s, p in a["errors"].items()})
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
            details, phase_table(phase), data))


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
                                  cell_details, errors_table(agg["errors"]), {"kind": "error bars", "errors": agg["errors"]}))
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


def _store_transfer(sec: Section, sw: Mapping[str, Any], rows: list[dict[str, Any]], figdir: Path, names: Names) -> None:
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

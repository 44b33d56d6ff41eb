"""Every figure and table the report draws from a results store equals an independent
recomputation from the run folders (``config.json``, ``result.json``), for random small stores:
several sweeps sharing runs, a sweep registered again with other axes, failed runs, sources named
coarse/fine or by level number. The figures are checked through ``Figure.data`` (what the
plotting function drew), the tables through their rows as rendered."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from granularity.sweeps.query import apply_filters
from granularity.report import collect_sections
from granularity.sweeps.spec import expand
from granularity.sweeps.store import ResultsStore

from store_fakes import SIM_BASE, record, sim_result

POOL = {"data.k": [2, 3, 4], "data.sigma": [0.1, 0.2, 0.3], "train.lr": [0.5, 0.25]}
DEEP = {"data": {"deeper": [3], "P": 16, "d": 96}, "transfer": {"sources": [1, 2, 3]}}
PROTOCOLS = ("map", "probe")


def dig(tree, dotted):  # the test's own reading of a dotted key (not the library's)
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def unit(*parts) -> float:
    """A value in [0, 1) fixed by the parts (the same for a run in every sweep)."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 2**32


def make_outcome(sources, fail_salt):
    def outcome(run):
        if fail_salt is not None and unit(run.run_id, fail_salt) < 0.25:
            return None
        return sim_result({s: {p: {k: round(unit(run.run_id, s, p, k), 4) for k in ("easy", "hard")} for p in PROTOCOLS}
                           for s in sources}, run.seed)
    return outcome


@st.composite
def sweep_specs(draw):
    deep = draw(st.booleans())
    specs = []
    for _ in range(draw(st.integers(1, 3))):
        keys = draw(st.lists(st.sampled_from(sorted(POOL)), min_size=1, max_size=2, unique=True))
        axes = {k: draw(st.lists(st.sampled_from(POOL[k]), min_size=1, max_size=3, unique=True)) for k in keys}
        base = copy.deepcopy(SIM_BASE)
        if deep:
            for part, fields in DEEP.items():
                base[part].update(fields)
        for k in POOL:
            if k not in keys:
                part, field = k.split(".")
                base[part][field] = draw(st.sampled_from(POOL[k]))
        # a name drawn twice: the sweep is registered again with other axes (the last one counts)
        specs.append({"name": draw(st.sampled_from("abc")), "kind": "simulate", "base": base, "axes": axes,
                      "seeds": draw(st.sampled_from([1, 2]))})
    fail_salt = draw(st.one_of(st.none(), st.integers(0, 10**6)))
    return deep, specs, fail_salt


# ---- the independent recomputation ------------------------------------------------------------
def expected(store: Path, sweep) -> dict[tuple, list[dict | None]]:
    """cell (the sweep's axis values read from each run's config.json) -> its runs' result.json (None: failed)."""
    cells = defaultdict(list)
    for run in sweep.runs:
        folder = store / "runs" / run.run_id
        cfg = json.loads((folder / "config.json").read_text())
        res = folder / "result.json"
        cells[tuple(dig(cfg, k) for k in sweep.axis_keys)].append(json.loads(res.read_text()) if res.exists() else None)
    return dict(cells)


def summary(results, src, proto, kind):
    vals = np.array([r["errors"][src][proto][kind]["mean"] for r in results if r is not None])
    if vals.size == 0:
        return math.nan, math.nan, 0
    ci = stats.t.ppf(0.975, vals.size - 1) * vals.std(ddof=1) / math.sqrt(vals.size) if vals.size > 1 else math.nan
    return float(vals.mean()), float(ci), int(vals.size)


def parse_ci(text):
    mean, _, ci = text.partition(" ± ")
    return float(mean), float(ci) if ci else math.nan


def close(shown, exact, digits=3):
    return (math.isnan(shown) and math.isnan(exact)) or abs(shown - exact) <= 0.5 * 10**-digits + 1e-12


# ---- the checks -------------------------------------------------------------------------------
def check_table(sec, sweep, cells, sources):
    (rows,) = [t for c, t in sec.tables if c.startswith("Per cell")]
    head, body = rows[0], rows[1:]
    assert head[: len(sweep.axis_keys)] == sweep.axis_keys
    assert len(body) == len(cells)
    for row in body:
        key = next(k for k in cells if [str(v) for v in k] == row[: len(k)])
        results = cells[key]
        n_ok = sum(r is not None for r in results)
        assert row[head.index("seeds")] == str(n_ok)
        if n_ok == 0:
            assert "no finished run" in row[-1]
            continue
        for src in sources:
            for kind in ("hard", "easy"):
                mean, ci, _ = summary(results, src, "map", kind)
                got = parse_ci(row[head.index(f"{src} map {kind}")])
                assert close(got[0], mean) and close(got[1], ci), (src, kind, row, mean, ci)


def check_heatmaps(sec, sweep, cells, sources):
    figs = [f for f in sec.figures if f.data and f.data["kind"] == "heatmaps"]
    assert len(figs) == len(PROTOCOLS)
    xk, yk = sweep.axis_keys
    xs, ys = sorted({k[0] for k in cells}), sorted({k[1] for k in cells})
    for fig, proto in zip(figs, PROTOCOLS):
        assert (fig.data["x_key"], fig.data["x_values"], fig.data["y_key"], fig.data["y_values"]) == (xk, xs, yk, ys)
        grids = {src: np.array([[summary(cells.get((x, y), []), src, proto, "hard")[0] for x in xs] for y in ys])
                 for src in sources}
        panels = fig.data["panels"]
        assert [p["source"] for p in panels] == [*sources, f"{sources[0]}-{sources[-1]}"]
        for p in panels[:-1]:
            np.testing.assert_allclose(np.array(p["values"], dtype=float), grids[p["source"]], rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.array(panels[-1]["values"], dtype=float), grids[sources[0]] - grids[sources[-1]],
                                   rtol=0, atol=1e-12)


def check_curves(sec, sweep, cells, sources):
    figs = [f for f in sec.figures if f.data and f.data["kind"] == "lines"]
    assert len(figs) == len(PROTOCOLS)
    for fig, proto in zip(figs, PROTOCOLS):
        for src in sources:
            for kind in ("hard", "easy"):
                pts = sorted((k[0], summary(r, src, proto, kind)) for k, r in cells.items() if any(r))
                line = fig.data["series"][f"{src}, {kind}"]
                assert line["x"] == [float(x) for x, _ in pts]
                np.testing.assert_allclose(line["mean"], [s[0] for _, s in pts], rtol=0, atol=1e-12)


def check_cell_bars(sec, sweep, cells, sources):
    figs = [f for f in sec.figures if f.data and f.data["kind"] == "error bars"]
    ok = {k: r for k, r in cells.items() if any(r)}
    assert len(figs) == (len(ok) if len(cells) <= 4 else 0)
    for fig, (key, results) in zip(figs, ok.items()):
        assert fig.title.endswith(", ".join(f"{k}={v}" for k, v in zip(sweep.axis_keys, key)))
        for src in sources:
            for proto in PROTOCOLS:
                for kind in ("easy", "hard"):
                    assert fig.data["errors"][src][proto][kind]["mean"] == pytest.approx(
                        summary(results, src, proto, kind)[0], abs=1e-12)


def check_results_table(store, sweep):
    with ResultsStore(store, create=False) as st_:
        df = st_.frame(sweep=sweep.name, encode_lists=False)
    assert list(df["run_id"]) == [r.run_id for r in sweep.runs]
    for key in sweep.axis_keys:
        truth = [dig(json.loads((store / "runs" / r.run_id / "config.json").read_text()), key) for r in sweep.runs]
        assert list(df[key]) == truth
        for value in set(truth):  # --filter key=value selects exactly the runs with that value
            kept = apply_filters(df, (f"{key}={value}",))
            assert list(kept["run_id"]) == [r.run_id for r, t in zip(sweep.runs, truth) if t == value]
    assert list(df["seed"]) == [r.seed for r in sweep.runs]


@pytest.mark.slow  # ~40 s: every example draws its figures
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(case=sweep_specs())
def test_report_figures_and_tables_equal_a_recomputation_from_the_run_folders(case, tmp_path_factory):
    deep, specs, fail_salt = case
    sources = ["1", "2", "3"] if deep else ["coarse", "fine"]
    root = tmp_path_factory.mktemp("pin")
    store = root / "store"
    final = {}
    for spec in specs:
        sweep = expand(spec)
        record(store, sweep, make_outcome(sources, fail_salt))
        final[sweep.name] = sweep
    sections = {s.title: s for s in collect_sections([store], root / "report")}
    assert set(sections) == {f"Sweep {n!r} (simulate)" for n in final}
    for name, sweep in final.items():
        sec = sections[f"Sweep {name!r} (simulate)"]
        cells = expected(store, sweep)
        check_results_table(store, sweep)
        if not any(any(r) for r in cells.values()):
            assert "No finished runs yet." in sec.notes and not sec.figures
            continue
        check_table(sec, sweep, cells, sources)
        if len(sweep.axes) == 2:
            check_heatmaps(sec, sweep, cells, sources)
        else:
            check_curves(sec, sweep, cells, sources)
        check_cell_bars(sec, sweep, cells, sources)


# ---- transfer sweeps: the per-cell table and the U-curve ----------------------------------------
CLASSES = {"target": 4, "leaf": 10, "level:1": 2, "level:2": 4}  # level:2 has the target's class count


@st.composite
def transfer_specs(draw):
    specs = []
    for _ in range(draw(st.integers(1, 2))):
        axes = {"source": draw(st.lists(st.sampled_from(sorted(CLASSES)), min_size=1, max_size=4, unique=True))}
        lr = draw(st.lists(st.sampled_from([0.05, 0.005]), min_size=1, max_size=2, unique=True))
        base = {"dataset": "fashion-mnist", "train_size": 600}
        if draw(st.booleans()):
            axes["transfer.lr"] = lr
        else:
            base["transfer.lr"] = lr[0]
        specs.append({"name": draw(st.sampled_from("ab")), "kind": "transfer", "base": base, "axes": axes,
                      "seeds": draw(st.sampled_from([1, 2]))})
    return specs, draw(st.one_of(st.none(), st.integers(0, 10**6)))


def transfer_outcome(fail_salt):
    from store_fakes import transfer_result

    def outcome(run):
        if fail_salt is not None and unit(run.run_id, fail_salt) < 0.25:
            return None
        src = run.config["source"]
        return transfer_result(run, round(unit(run.run_id, "te"), 4), CLASSES[src], "target" if src == "target" else
                               "hierarchy" if src.startswith(("level", "leaf")) else src)
    return outcome


def expected_u_lines(sweep, cells):
    """label -> sorted [(classes, mean target error)], recomputed: one line per family (target
    folded onto hierarchy unless that line has its class count) and value of the other axis."""
    others = [k for k in sweep.axis_keys if k != "source"]
    lines = defaultdict(dict)
    for key, results in cells.items():
        ok = [r for r in results if r is not None]
        if ok:
            rest = tuple(v for k, v in zip(sweep.axis_keys, key) if k != "source")
            lines[(ok[0]["source_family"], rest)][ok[0]["num_source_classes"]] = float(np.mean([r["target_error"] for r in ok]))
    out = {}
    for (fam, rest), pts in lines.items():
        if fam == "target" and not set(pts) & set(lines.get(("hierarchy", rest), {})):
            continue  # folded below
        merged = dict(pts)
        if fam == "hierarchy":
            target = lines.get(("target", rest), {})
            if not set(target) & set(pts):
                merged.update(target)
        label = fam + "".join(f", {k}={v}" for k, v in zip(others, rest))
        out[label] = sorted(merged.items())
    for (fam, rest), pts in lines.items():  # a target line with no hierarchy line at all
        label = "hierarchy" + "".join(f", {k}={v}" for k, v in zip(others, rest))
        if fam == "target" and ("hierarchy", rest) not in lines:
            out[label] = sorted(pts.items())
    return out


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=transfer_specs())
def test_transfer_report_equals_a_recomputation_from_the_run_folders(case, tmp_path_factory):
    specs, fail_salt = case
    root = tmp_path_factory.mktemp("pin_tr")
    store = root / "store"
    final = {}
    for spec in specs:
        sweep = expand(spec)
        record(store, sweep, transfer_outcome(fail_salt))
        final[sweep.name] = sweep
    sections = {s.title: s for s in collect_sections([store], root / "report")}
    for name, sweep in final.items():
        sec = sections[f"Sweep {name!r} (transfer)"]
        cells = expected(store, sweep)
        check_results_table(store, sweep)
        if not any(any(r) for r in cells.values()):
            assert not sec.figures
            continue
        (rows,) = [t for c, t in sec.tables if c.startswith("Per cell")]
        head, body = rows[0], rows[1:]
        assert len(body) == len(cells)
        for row in body:
            results = [r for r in cells[next(k for k in cells if [str(v) for v in k] == row[: len(k)])] if r is not None]
            assert row[head.index("seeds")] == str(len(results))
            if results:
                vals = np.array([r["target_error"] for r in results])
                ci = stats.t.ppf(0.975, vals.size - 1) * vals.std(ddof=1) / math.sqrt(vals.size) if vals.size > 1 else math.nan
                got = parse_ci(row[head.index("target error")])
                assert close(got[0], vals.mean()) and close(got[1], ci)
            else:
                assert "no finished run" in row[-1]
        lines = expected_u_lines(sweep, cells)
        figs = [f for f in sec.figures if f.title.startswith("U-curve")]
        if not any(len(pts) >= 2 for pts in lines.values()):
            assert not figs
            continue
        (fig,) = figs
        drawn = {label: list(zip(s["x"], s["mean"])) for label, s in fig.data["series"].items()}
        assert drawn.keys() == lines.keys()
        for label, pts in lines.items():
            assert [x for x, _ in drawn[label]] == [float(x) for x, _ in pts]
            np.testing.assert_allclose([m for _, m in drawn[label]], [m for _, m in pts], rtol=0, atol=1e-12)

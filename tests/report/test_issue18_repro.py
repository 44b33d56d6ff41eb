"""The four reproductions of issue 18, each written before its fix and seen failing on the old
code: the report grouped a sweep's runs by another sweep's registration; the transfer U-curve
joined runs that differ in other axes; ``results --filter`` parsed values as YAML 1.1 and
compared lists as text and floats by every digit; phase heatmaps were blank for level-number
sources and dropped an axis value whose runs all failed."""

from __future__ import annotations

import html
import re

import matplotlib.axes
import numpy as np
import pytest

from granularity.report import build_report
from granularity.sweeps.spec import expand
from granularity.sweeps.store import ResultsStore

from store_fakes import TRANSFER_BASE, record, sim_result, sim_sweep, transfer_result


def section_tables(text: str, title: str) -> dict[str, list[list[str]]]:
    """The tables (caption -> rows, header first) of the report section titled ``title``."""
    sections = re.findall(r"<section id='s\d+'><h2>(.*?)</h2>(.*?)</section>", text, re.S)
    body = next(b for t, b in sections if html.unescape(t) == title)
    out = {}
    for caption, table in re.findall(r"<h4>(.*?)</h4><table>(.*?)</table>", body, re.S):
        rows = [[html.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", tr, re.S)]
                for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
        out[html.unescape(caption)] = rows
    return out


# ---- 1: grouping by the sweep's own axes, never another sweep's registration ---------------
FINE = {(2, 0.1): (0.040, 0.030), (2, 0.2): (0.125, 0.185), (4, 0.1): (0.090, 0.096), (4, 0.2): (0.250, 0.230)}


def _fine_outcome(run):
    value = FINE[(run.config["data"]["k"], run.config["data"]["sigma"])][run.seed]
    return sim_result({"coarse": {"map": {"easy": 0.0, "hard": 0.5}}, "fine": {"map": {"easy": 0.0, "hard": value}}},
                      run.seed)


def test_report_groups_by_the_sweeps_own_axes_not_another_registration(tmp_path):
    store = tmp_path / "store"
    record(store, sim_sweep("a1", {"data.k": [2, 4]}, base={"data": {"sigma": 0.1}}), _fine_outcome)
    record(store, sim_sweep("a2", {"data.k": [2, 4]}, base={"data": {"sigma": 0.2}}), _fine_outcome)
    b = sim_sweep("b", {"data.k": [2, 4], "data.sigma": [0.1, 0.2]})
    with ResultsStore(store) as st:
        assert {r["status"] for r in st.rows([r.run_id for r in b.runs])} == {"ok"}  # all 8 runs shared
    record(store, b, _fine_outcome)
    with ResultsStore(store, create=False) as st:  # the store itself answers with b's own params
        assert [r["params"] for r in st.rows(sweep="b")] == [r.params for r in b.runs]
        assert [r["params"] for r in st.rows(sweep="a1")] == [r.params for r in sim_sweep(
            "a1", {"data.k": [2, 4]}, base={"data": {"sigma": 0.1}}).runs]
    text = build_report([store], tmp_path / "report").read_text()
    rows = section_tables(text, "Sweep 'b' (simulate)")["Per cell (mean ± 95% CI over seeds, protocol map)"]
    head, body = rows[0], rows[1:]
    got = {(r[head.index("data.k")], r[head.index("data.sigma")]): float(r[head.index("fine map hard")].split()[0])
           for r in body}
    # before: 2 cells keyed sigma=None, each the mean of both sigmas (0.0975 and 0.1665)
    assert got == pytest.approx({("2", "0.1"): 0.035, ("2", "0.2"): 0.155, ("4", "0.1"): 0.093, ("4", "0.2"): 0.240},
                                abs=1e-3)


# ---- 2: the transfer U-curve joins only runs that agree on every other axis ----------------
CLASSES = {"target": 4, "leaf": 10, "level:1": 2}


def test_transfer_u_curve_one_line_per_other_axis_values_with_the_baseline_on_it(tmp_path, monkeypatch):
    sweep = expand({"name": "lr", "kind": "transfer", "base": TRANSFER_BASE,
                    "axes": {"source": ["target", "leaf", "level:1"], "transfer.lr": [0.05, 0.005]}, "seeds": 2})
    err = {("target", 0.05): 0.30, ("leaf", 0.05): 0.20, ("level:1", 0.05): 0.40,
           ("target", 0.005): 0.50, ("leaf", 0.005): 0.45, ("level:1", 0.005): 0.60}

    def outcome(run):
        src, lr = run.config["source"], run.config["transfer"]["lr"]
        return transfer_result(run, err[(src, lr)] + 0.01 * run.seed, CLASSES[src],
                               "target" if src == "target" else "hierarchy")

    record(tmp_path / "store", sweep, outcome)
    drawn = {}
    import granularity.report.figures as figures

    real = figures.plot_lines

    def spy(series, path, **kw):
        drawn[path.name] = {k: ([float(x) for x in v[0]], [float(m) for m in v[1]]) for k, v in series.items()}
        return real(series, path, **kw)

    monkeypatch.setattr(figures, "plot_lines", spy)
    build_report([tmp_path / "store"], tmp_path / "report")
    (series,) = [s for name, s in drawn.items() if "u_curve" in name]
    # before: one 'hierarchy' line through both learning rates and a one-point 'target' series
    assert len(series) == 2, series
    for label, (xs, means) in series.items():
        lr = 0.05 if "0.05" in label else 0.005
        assert "transfer.lr" in label and "hierarchy" in label
        pts = sorted(zip(xs, means))
        want = [(2, err[("level:1", lr)] + 0.005), (4, err[("target", lr)] + 0.005), (10, err[("leaf", lr)] + 0.005)]
        # flat lists: pytest >= 9.2 refuses nested structures in approx
        assert [v for p in pts for v in p] == pytest.approx([v for p in want for v in p])


# ---- 3: one value parser for --set, --filter and sweep files --------------------------------
@pytest.fixture
def filter_store(tmp_path):
    store = tmp_path / "store"
    sweep = sim_sweep("f", {"train.lr": [0.5, 0.25], "data.sigma": {"geom": [0.05, 0.2, 4]}}, seeds=1,
                      zip=[{"data.k": [[4, 12], 3], "model.train_second_layer": [True, False]}])
    record(store, sweep, lambda run: sim_result({"fine": {"map": {"easy": 0.1, "hard": 0.2}}}, run.seed))
    return store, sweep


def n_rows(cli, store, *filters):
    code, out, err = cli("results", store, *[a for f in filters for a in ("--filter", f)], "--export",
                         store.parent / "out.csv")
    assert code == 0, err
    return int(re.match(r"(\d+) runs written", err).group(1))


def test_filter_values_parse_like_set_and_sweep_files(filter_store, cli):
    store, sweep = filter_store  # 2 lr x 4 sigma x 2 (k, second layer) = 16 runs
    assert n_rows(cli, store, "train.lr=5e-1") == 8  # before: 0 (a string in YAML 1.1)
    assert n_rows(cli, store, "data.sigma=5e-2") == 4  # before: 0
    assert n_rows(cli, store, "data.sigma<2e-1") == 12  # before: an error
    assert n_rows(cli, store, "data.sigma<=2e-1") == 16
    assert n_rows(cli, store, "model.train_second_layer=false") == 8  # the --set spelling; before: 0
    assert n_rows(cli, store, "model.train_second_layer=False") == 8
    assert n_rows(cli, store, "data.k=[4, 12]") == 8  # lists compared as values; before: 0
    assert n_rows(cli, store, "data.k=[4,12]", "train.lr!=0.5") == 4
    assert n_rows(cli, store, "data.k=3") == 8


def test_filter_matches_the_digits_the_table_shows(filter_store, cli):
    store, _ = filter_store
    code, out, err = cli("results", store, "--columns", "data.sigma")
    shown = sorted(set(out.split()[1:]), key=float)
    assert len(shown) == 4
    for value in shown:  # what the table shows selects its runs (before: 0 rows for the rounded 0.079370)
        assert n_rows(cli, store, f"data.sigma={value}") == 4


def test_filter_refuses_a_value_of_another_type(filter_store, cli):
    store, _ = filter_store
    code, out, err = cli("results", store, "--filter", "model.train_second_layer=no")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "model.train_second_layer" in err and "'no'" in err and "true or false" in err


def test_sweep_files_and_set_read_yaml_1_2(tmp_path):
    from granularity.sweeps.spec import load_sweep
    from granularity.utils.config import apply_overrides

    path = tmp_path / "s.yaml"
    path.write_text("kind: simulate\npreset: quick\naxes:\n  data.sigma: {geom: [1e-2, 1e-1, 2]}\n  train.lr: [5e-1]\n")
    sw = load_sweep(path)  # before: the geom range was refused (1e-2 read as a string)
    assert [r.params["data.sigma"] for r in sw.runs] == [0.01, 0.1]
    assert apply_overrides({}, ["a=5e-1", "b=on", "c=false", "d=null", "e=[1e-1, 2]"]) == {
        "a": 0.5, "b": "on", "c": False, "d": None, "e": [0.1, 2]}


# ---- 4: heatmaps for level-number sources, failed axis values shown as missing -------------
@pytest.fixture
def imshow_spy(monkeypatch):
    """The arrays every heatmap panel draws (what the PNG shows, not what was meant)."""
    drawn = []
    real = matplotlib.axes.Axes.imshow

    def spy(self, X, *a, **kw):
        drawn.append(np.ma.filled(np.ma.asarray(X, dtype=float), np.nan).copy())
        return real(self, X, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    return drawn


DEEP = {"data": {"k": 4, "deeper": [3], "P": 16, "d": 96}, "transfer": {"sources": [1, 2, 3]}}


def _deep_outcome(run):
    k, sigma = run.config["data"]["k"], run.config["data"]["sigma"]
    return sim_result({str(lvl): {"map": {"easy": 0.0, "hard": 0.1 * lvl + sigma + 0.01 * k + 0.001 * run.seed}}
                       for lvl in (1, 2, 3)}, run.seed)


def test_store_heatmap_with_level_number_sources(tmp_path, imshow_spy):
    sweep = sim_sweep("deep", {"data.k": [3, 4], "data.sigma": [0.1, 0.2]}, base=DEEP)
    record(tmp_path / "store", sweep, _deep_outcome)
    build_report([tmp_path / "store"], tmp_path / "report", protocol="map")
    # before: nothing drawn (panels only for sources named coarse/fine)
    assert len(imshow_spy) == 4  # levels 1, 2, 3 and level 1 - level 3
    for lvl, arr in zip((1, 2, 3), imshow_spy):
        expect = [[0.1 * lvl + s + 0.01 * k + 0.0005 for k in (3, 4)] for s in (0.1, 0.2)]
        assert arr == pytest.approx(np.array(expect))
    assert imshow_spy[3] == pytest.approx(imshow_spy[0] - imshow_spy[2])


def test_phase_folder_png_with_level_number_sources(tmp_path, imshow_spy):
    from granularity.theory.phase import build_phase
    from granularity.utils.io import write_json

    phase = {"x": ["data.k", [3, 4]], "y": ["data.sigma", [0.1]], "protocol": "map", "base": {}}
    write_json(tmp_path / "phase_spec.json", phase)
    for k in (3, 4):
        cell = tmp_path / "cells" / f"k={k}__sigma=0.1"
        write_json(cell / "result.json", sim_result({"1": {"map": {"easy": 0, "hard": 0.1 * k}},
                                                     "3": {"map": {"easy": 0, "hard": 0.01 * k}}}, 0))
    build_phase(tmp_path)
    assert len(imshow_spy) == 3  # before: 0, an empty 0-1 axis in phase.png
    assert imshow_spy[0] == pytest.approx(np.array([[0.3, 0.4]]))


def test_axis_value_whose_runs_all_failed_is_shown_missing(tmp_path, imshow_spy):
    sweep = sim_sweep("f", {"data.k": [2, 3], "data.sigma": [0.1, 0.2, 0.3]})

    def outcome(run):
        if run.config["data"]["sigma"] == 0.3:
            return None
        return sim_result({"coarse": {"map": {"easy": 0, "hard": 0.4}}, "fine": {"map": {"easy": 0, "hard": 0.2}}},
                          run.seed)

    record(tmp_path / "store", sweep, outcome)
    text = build_report([tmp_path / "store"], tmp_path / "report", protocol="map").read_text()
    # before: a 2 x 2 heatmap, sigma=0.3 gone
    assert [a.shape for a in imshow_spy] == [(3, 2)] * 3
    assert np.isnan(imshow_spy[0][2]).all() and not np.isnan(imshow_spy[0][:2]).any()
    rows = section_tables(text, "Sweep 'f' (simulate)")["Per cell (mean ± 95% CI over seeds, protocol map)"]
    missing = [r for r in rows[1:] if r[1] == "0.3"]
    assert len(missing) == 2 and all("no finished run" in " ".join(r) for r in missing)
    assert "all runs failed" in text


def test_phase_folder_cell_without_result_is_named_missing(tmp_path, imshow_spy):
    from granularity.report import collect_sections
    from granularity.theory.phase import build_phase, format_phase
    from granularity.utils.io import write_json

    write_json(tmp_path / "p" / "phase_spec.json",
               {"x": ["data.k", [3, 4]], "y": ["data.sigma", [0.1]], "protocol": "map", "base": {}})
    cell = tmp_path / "p" / "cells" / "k=3__sigma=0.1"  # k=4 never finished
    write_json(cell / "result.json", sim_result({"coarse": {"map": {"easy": 0, "hard": 0.3}},
                                                 "fine": {"map": {"easy": 0, "hard": 0.1}}}, 0))
    text = format_phase(build_phase(tmp_path / "p"))
    assert "missing" in text and "nan" not in text
    (sec,) = collect_sections([tmp_path / "p"], tmp_path / "report")
    (fig,) = sec.figures
    assert fig.table[1:] == [["0.1", "3", "0.300 ± 0.000", "0.100 ± 0.000"], ["0.1", "4", "missing", "missing"]]
    np.testing.assert_allclose(np.array([p["values"] for p in fig.data["panels"]], dtype=float),
                               [[[0.3, np.nan]], [[0.1, np.nan]], [[0.2, np.nan]]], atol=1e-12)
    assert any("data.k=4, data.sigma=0.1" in n for n in sec.notes)

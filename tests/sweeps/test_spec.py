"""Sweep files: axes, ranges, zip groups, seeds, stable ids, one-line validation errors."""

import pytest

from granularity.errors import GranularityError
from granularity.sweeps.spec import axis_values, expand, load_sweep, parse_seeds

from sweep_helpers import TINY_BASE, write_sweep


def spec(**kw):
    return {"kind": "simulate", "base": TINY_BASE, **kw}


def test_axis_value_forms():
    assert axis_values("a", [1, "x", None], "w") == [1, "x", None]
    assert axis_values("a", {"start": 0.1, "stop": 0.5, "step": 0.2}, "w") == [0.1, 0.3, 0.5]  # stop included
    assert axis_values("a", {"start": 2, "stop": 9, "step": 3}, "w") == [2, 5, 8]  # ints stay ints
    assert axis_values("a", {"start": 5, "stop": 1, "step": -2}, "w") == [5, 3, 1]
    assert axis_values("a", {"geom": [2, 16, 4]}, "w") == [2, 4, 8, 16]
    assert all(isinstance(v, int) for v in axis_values("a", {"geom": [2, 16, 4]}, "w"))
    assert axis_values("a", {"geom": [0.01, 1.0, 3]}, "w") == [0.01, 0.1, 1.0]
    assert axis_values("a", {"lin": [0.0, 1.0, 5]}, "w") == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("bad, match", [
    ([], "non-empty list"),
    (3, "non-empty list"),
    ({"start": 0, "stop": 1, "step": 0}, "step that goes"),
    ({"start": 0, "stop": 1, "step": -1}, "step that goes"),
    ({"geom": [0, 1, 3]}, "a, b > 0"),
    ({"geom": [1, 2, 0]}, "int n >= 1"),
    ({"stop": 1}, "non-empty list"),
])
def test_axis_value_errors(bad, match):
    with pytest.raises(GranularityError, match=match) as exc:
        axis_values("data.sigma", bad, "sweep file 'x.yaml'")
    assert "'data.sigma'" in str(exc.value) and "\n" not in str(exc.value)


def test_seeds_forms():
    assert parse_seeds(3, "w") == [0, 1, 2]
    assert parse_seeds([4, 1], "w") == [4, 1]
    assert parse_seeds({"start": 10, "count": 2}, "w") == [10, 11]
    for bad in (0, [1, 1], [-1], {"start": 0}, "3", True):
        with pytest.raises(GranularityError, match="'seeds'"):
            parse_seeds(bad, "w")


def test_expand_grid_zip_seeds_and_ids():
    sw = expand(spec(axes={"data.k": [2, 3]}, zip=[{"train.lr": [0.5, 0.25], "train.steps": [40, 20]}], seeds=[0, 7]),
                source="grid.yaml")
    assert sw.name == "grid" and sw.axes == [["data.k"], ["train.lr", "train.steps"]]
    assert len(sw.runs) == 2 * 2 * 2 and len({r.run_id for r in sw.runs}) == 8
    first = sw.runs[0]
    assert first.params == {"data.k": 2, "train.lr": 0.5, "train.steps": 40, "seed": 0}
    # one sweep run = one seed of the simulator
    assert (first.config["seeds"], first.config["seed0"]) == (1, 0)
    assert sw.runs[1].config["seed0"] == 7
    zipped = {(r.params["train.lr"], r.params["train.steps"]) for r in sw.runs}
    assert zipped == {(0.5, 40), (0.25, 20)}


def test_ids_depend_on_the_resolved_config_only():
    a = expand(spec(axes={"data.k": [2, 3], "data.sigma": [0.1]}, seeds=2))
    # the same runs spelled differently: dotted base keys, the other axis order, explicit defaults
    base = {"name": "tiny", "data.d": 32, "data.P": 6, "model": {"m": 4, "activation": "relu"},
            "train": TINY_BASE["train"], "transfer": TINY_BASE["transfer"]}
    b = expand({"kind": "simulate", "base": base, "axes": {"data.sigma": [0.1], "data.k": {"start": 2, "stop": 3, "step": 1}},
                "seeds": [0, 1]})
    assert {r.run_id for r in a.runs} == {r.run_id for r in b.runs}
    c = expand(spec(axes={"data.k": [2, 3], "data.sigma": [0.1]}, seeds=[0, 1, 2]))
    assert {r.run_id for r in a.runs} < {r.run_id for r in c.runs}  # more seeds: a superset


@pytest.mark.parametrize("bad, match", [
    ({"axis": {}}, r"Unknown key 'axis' \(did you mean 'axes'\?\)"),
    ({"kind": "simulat"}, r"Unknown experiment kind 'simulat' \(did you mean 'simulate'\?\)"),
    ({"preset": "quik"}, r"Unknown preset 'quik' \(did you mean 'quick'\?\)"),
    ({"axes": {"data.kk": [2]}}, r"run data.kk=2: Unknown config key 'data.kk' \(did you mean 'k'\?\)"),
    ({"axes": {"data.k": [2, 0]}}, r"run data.k=0: Invalid value for 'data.k'"),
    ({"axes": {"train.lr": [-1.0]}}, r"Invalid value for 'train.lr'.*Got -1.0"),
    ({"axes": {"seed0": [1, 2]}}, r"axis 'seed0'.*seeds"),
    ({"base": {"seeds": 4}}, r"'base.seeds'.*seeds"),
    ({"axes": {"data.k": [2]}, "zip": [{"data.k": [3]}]}, r"'data.k' appears on two axes"),
    ({"zip": [{"train.lr": [0.1, 0.2], "train.steps": [10]}]}, "must have one length"),
    ({"axes": {"data.k": [2, 2]}}, "same config"),
    ({"axes": {"data.k": "2,3"}}, r"'axes.data.k' entry"),
    ({"seeds": 0}, r"'seeds' entry"),
    ({"axes": {"data.k": [8], "data.d": [8]}}, "orthonormal features but d=8"),
])
def test_bad_sweeps_give_one_line_errors(tmp_path, bad, match):
    path = write_sweep(tmp_path / "bad.yaml", **{"seeds": 1, **bad})
    with pytest.raises(GranularityError, match=match) as exc:
        load_sweep(path)
    assert "\n" not in str(exc.value)


def test_sweep_file_errors(tmp_path):
    with pytest.raises(GranularityError, match="does not exist"):
        load_sweep(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(GranularityError, match="mapping"):
        load_sweep(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("axes: {data.k: [1,\n")
    with pytest.raises(GranularityError, match="not valid YAML"):
        load_sweep(tmp_path / "broken.yaml")


def test_transfer_sweeps_use_the_study_settings():
    sw = expand({"kind": "transfer", "preset": "study-quick", "axes": {"source": ["target", "level:3"]}, "seeds": 2})
    assert [r.params for r in sw.runs][:2] == [{"source": "target", "seed": 0}, {"source": "target", "seed": 1}]
    assert sw.runs[0].config["train_size"] == 600 and sw.runs[1].config["seed"] == 1
    with pytest.raises(GranularityError, match=r"Unknown transfer preset 'stdy' \(did you mean 'study'\?\)"):
        expand({"kind": "transfer", "preset": "stdy"})
    with pytest.raises(GranularityError, match="source"):
        expand({"kind": "transfer", "axes": {"source": ["nonsense:3"]}})

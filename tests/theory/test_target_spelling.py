"""The level of the target task is `transfer.target` in the simulator, as `target` in the
engine (granularity.vocabulary); the old `transfer.target_level` still works with exactly one
deprecation line (config, file, --set, phase and sweep axes, filters), gives the same config,
the same config hash and run ids (pinned to the ids printed before the rename), and run and
phase folders written in the old spelling are read and resumed silently."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import pytest

from granularity.errors import GranularityError
from granularity.sweeps.spec import expand
from granularity.theory.config import SimConfig, SimTransferConfig
from granularity.theory.experiment import config_hash, simulate
from granularity.theory.presets import resolve_config
from granularity.utils.config import deep_merge
from granularity.utils.deprecation import GranularityDeprecationWarning

from fakes import TINY_SIM  # tests/ is on sys.path

# printed by the release before the rename (commit b72687a): sweep run ids of seeds 0 and 1 and
# the simulate folder's config hash, for the presets paper and quick and for `deep` evaluated at
# level 2 (transfer.target_level=2, sources [coarse, fine])
PINNED = {
    "paper": (["077d8d6b22d5a6ab", "2743d3bcb03f6409"], "bca8e341fb01673a"),
    "quick": (["7ad5913a5e6dc238", "e25fda8d1e2742c0"], "7064482d5957ebee"),
    "deep2": (["e89b7d31ad88571b", "d832f326ac23943c"], "d87200c816aff9d6"),
}
DEEP_AXIS_IDS = ["cc5a31f8f68c66c0", "e89b7d31ad88571b"]  # deep, axis target level [1, 2], seed 0
DEEP = {"data": {"k": 4, "deeper": [3], "P": 16}}
# a 3-level tree small enough to train in a second (2 x 2 x 2 leaves)
TINY3 = deep_merge(TINY_SIM, {"data": {"k": 2, "deeper": [2], "P": 8}, "seeds": 1, "seed_batch": 1,
                              "transfer": {"protocols": ["map"], "sources": ["coarse", "fine"]}})


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def one_warning(rec, old: str, new: str) -> None:
    msgs = [str(w.message) for w in rec if issubclass(w.category, GranularityDeprecationWarning)]
    assert len(msgs) == 1, msgs
    assert old in msgs[0] and new in msgs[0] and "deprecated" in msgs[0], msgs[0]


def silently(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GranularityDeprecationWarning)
        return fn(*args, **kwargs)


# ---- configs ------------------------------------------------------------------------------
def test_old_key_gives_the_same_config_with_one_warning():
    new = silently(SimConfig.build, deep_merge(DEEP, {"transfer": {"target": 2, "sources": [2, 3]}}))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        old = SimConfig.build(deep_merge(DEEP, {"transfer": {"target_level": 2, "sources": [2, 3]}}))
    one_warning(rec, "'transfer.target_level'", "'transfer.target'")
    assert old == new and old.transfer.target == 2 and old.data.hard_level == 2
    assert "target_level" not in old.to_dict()["transfer"]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert SimTransferConfig.build({"target_level": 3}).target == 3  # the section on its own
    one_warning(rec, "'transfer.target_level'", "'transfer.target'")


def test_both_spellings_at_once_is_an_error():
    with pytest.raises(GranularityError, match=r"'transfer.target_level' \(deprecated\) and 'transfer.target' are both set"):
        SimConfig.build(deep_merge(DEEP, {"transfer": {"target_level": 2, "target": 2}}))


def test_resolve_config_reads_old_file_and_set_layer_by_layer(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("transfer:\n  target_level: 2\n  sources: [coarse, fine]\n")
    new, _ = silently(resolve_config, "deep", None, ["transfer.target=2", "transfer.sources=[coarse,fine]"])
    for config, sets in ((path, ()), (None, ["transfer.target_level=2", "transfer.sources=[coarse,fine]"])):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            old, raw = resolve_config("deep", config, sets)
        one_warning(rec, "transfer.target_level", "transfer.target")
        assert old == new and raw["transfer"]["target"] == 2 and "target_level" not in raw["transfer"]
    # a new --set overrides the old file (the file was read in the new spelling first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GranularityDeprecationWarning)
        cfg, _ = resolve_config("deep", path, ["transfer.target=3"])
    assert cfg.transfer.target == 3


# ---- ids ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PINNED))
def test_run_ids_and_config_hash_are_those_of_before_the_rename(name):
    ids, digest = PINNED[name]
    preset = "deep" if name == "deep2" else name
    for key in ("target", "target_level"):
        level = {"transfer": {key: 2, "sources": ["coarse", "fine"]}} if name == "deep2" else {}
        sets = [f"transfer.{key}=2", "transfer.sources=[coarse,fine]"] if name == "deep2" else []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GranularityDeprecationWarning)
            sweep = expand({"kind": "simulate", "preset": preset, "base": level, "seeds": [0, 1]})
            cfg, _ = resolve_config(preset, None, sets)
        assert [r.run_id for r in sweep.runs] == ids, key
        assert config_hash(cfg) == digest, key


def test_config_hash_is_the_hash_of_the_first_spelling():
    """Recomputed by hand: sha256 of the dump with transfer.target_level, without run-only fields."""
    cfg, _ = resolve_config("deep", None, ["transfer.target=2", "transfer.sources=[coarse,fine]"])
    d = cfg.to_dict()
    d["transfer"]["target_level"] = d["transfer"].pop("target")
    for key in ("seeds", "seed_batch", "device", "name", "checkpoint_every"):
        d.pop(key)
    assert config_hash(cfg) == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def test_sweep_axis_and_filter_in_the_old_spelling():
    import pandas as pd

    from granularity.sweeps.kinds import get_kind
    from granularity.sweeps.query import apply_filters

    base = {"transfer": {"sources": ["coarse", "fine"]}}
    new = silently(expand, {"kind": "simulate", "preset": "deep", "base": base, "axes": {"transfer.target": [1, 2]}, "seeds": 1})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        old = expand({"kind": "simulate", "preset": "deep", "base": base, "axes": {"transfer.target_level": [1, 2]}, "seeds": 1})
    one_warning(rec, "the axis 'transfer.target_level: [1, 2]'", "'transfer.target: [1, 2]'")
    assert [r.run_id for r in old.runs] == [r.run_id for r in new.runs] == DEEP_AXIS_IDS
    assert [r.config for r in old.runs] == [r.config for r in new.runs] and old.axis_keys == ["transfer.target"]
    kind = get_kind("simulate")
    stored = kind.id_form(new.runs[1].config)  # a config as the release before the rename stored it
    assert stored["transfer"]["target_level"] == 2 and "target" not in stored["transfer"]
    assert kind.read_config(stored) == new.runs[1].config
    df = pd.DataFrame({"transfer.target": [1, 2], "run_id": ["a", "b"]})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        kept = apply_filters(df, ("transfer.target_level=2",))
    one_warning(rec, "'transfer.target_level'", "'transfer.target'")
    assert list(kept["run_id"]) == ["b"]


# ---- folders ------------------------------------------------------------------------------
def test_old_run_folder_resumes_silently(tmp_path):
    """A folder whose config.json and records say transfer.target_level is the same run: a rerun
    (one more seed) reuses the finished seed and adds the other, without a deprecation line;
    another target level is refused."""
    from granularity.sweeps.kinds import get_kind

    cfg = SimConfig.build(deep_merge(TINY3, {"transfer": {"target": 2}}))
    first = simulate(cfg, tmp_path, progress=False, figures=False)
    path = tmp_path / "config.json"
    stored = json.loads(path.read_text())
    stored["transfer"]["target_level"] = stored["transfer"].pop("target")
    path.write_text(json.dumps(stored))
    assert silently(get_kind("simulate").is_complete, tmp_path, cfg)
    from granularity.theory.experiment import summarise_run

    assert silently(summarise_run, tmp_path)["config"] == cfg.to_dict()
    seed0 = (tmp_path / "seeds" / "seed_0.json").stat().st_mtime_ns
    more = silently(simulate, cfg.model_copy(update={"seeds": 2}), tmp_path, progress=False, figures=False)
    assert more["config_hash"] == first["config_hash"] == config_hash(cfg) and more["seeds"] == [0, 1]
    assert more["errors"]["fine"]["map"]["hard"]["values"][0] == first["errors"]["fine"]["map"]["hard"]["values"][0]
    assert (tmp_path / "seeds" / "seed_0.json").stat().st_mtime_ns == seed0  # not recomputed
    with pytest.raises(GranularityError, match="different config"):
        simulate(cfg.model_copy(update={"transfer": cfg.transfer.model_copy(update={"target": 1})}), tmp_path,
                 progress=False, figures=False)


def test_phase_axis_in_the_old_spelling_and_an_old_phase_folder(cli, tmp_path):
    """`phase --x transfer.target_level=1,2`: exit 0, one deprecation line, cells at levels 1
    and 2 named in the new spelling; a phase folder made before the rename (old key in
    phase_spec.json, cells named target_level=...) is redrawn and resumed without training."""
    args = ["phase", "--preset", "quick", "--seeds", "1", "--quiet", "--out", tmp_path / "p", "--protocol", "map",
            "--x", "transfer.target_level=1,2", "--y", "data.sigma=0.1"]
    for s in ("data.d=32", "data.P=8", "data.k=2", "data.deeper=[2]", "model.m=3", "train.n_train=40", "train.steps=4",
              "train.batch_size=16", "train.log_points=2", "transfer.n_test=20", "transfer.protocols=[map]"):
        args += ["--set", s]
    code, out, err = cli(*args)
    assert code == 0, err
    lines = [x for x in err.splitlines() if "warning" in x]
    assert len(lines) == 1 and lines[0].startswith("granularity: warning:") and "'transfer.target: [1, 2]'" in lines[0], err
    phase = json.loads((tmp_path / "p" / "phase.json").read_text())
    assert phase["x_key"] == "transfer.target" and phase["x_values"] == [1, 2]
    for level in (1, 2):
        cell = tmp_path / "p" / "cells" / f"target={level}__sigma=0.1"
        stored = json.loads((cell / "config.json").read_text())
        assert stored["transfer"]["target"] == level and stored["data"]["hard_level"] == level
    assert all(v == v for grid in phase["grids"].values() for v in grid[0])

    # the same folder as the release before the rename left it
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "p", old)
    for level in (1, 2):
        (old / "cells" / f"target={level}__sigma=0.1").rename(old / "cells" / f"target_level={level}__sigma=0.1")
    spec = json.loads((old / "phase_spec.json").read_text())
    spec["x"][0] = "transfer.target_level"
    (old / "phase_spec.json").write_text(json.dumps(spec))
    (old / "phase.json").unlink()
    from granularity.theory.phase import build_phase, summarise_phase

    again = silently(build_phase, old)
    assert again["grids"] == phase["grids"] and again["x_key"] == "transfer.target"
    summary = silently(summarise_phase, old)
    assert summary["missing"] == [] and [c["transfer.target"] for c in summary["cells"]] == [1, 2]
    assert [c["config"]["transfer"]["target"] for c in summary["cells"]] == [1, 2]  # stored files, today's spelling
    stamps = {p: p.stat().st_mtime_ns for p in (old / "cells").glob("*/seeds/seed_0.json")}
    assert len(stamps) == 2
    args[args.index(tmp_path / "p")] = old
    args[args.index("transfer.target_level=1,2")] = "transfer.target=1,2"
    code, _, err = cli(*args)
    assert code == 0 and "warning" not in err, err
    assert {p: p.stat().st_mtime_ns for p in (old / "cells").glob("*/seeds/seed_0.json")} == stamps  # not retrained
    assert not any((old / "cells").glob("target=*"))


def test_store_of_an_old_release_reads_in_the_new_spelling(tmp_path):
    """A store whose sweep (axis transfer.target_level) and run configs were written before the
    rename, the same sweep registered again in the new spelling (its runs, same ids, keep their
    stored configs): rows and sweeps read in today's spelling, so every run sits in its cell."""
    import dataclasses

    from granularity.sweeps.kinds import get_kind
    from granularity.sweeps.store import ResultsStore
    from granularity.utils.config import get_dotted

    kind = get_kind("simulate")
    spec = {"kind": "simulate", "preset": "deep", "base": {"transfer": {"sources": ["coarse", "fine"]}},
            "axes": {"transfer.target": [1, 2]}, "seeds": 1, "name": "levels"}
    new = silently(expand, spec)
    old_runs = [dataclasses.replace(r, config=kind.id_form(r.config), params={"transfer.target_level": r.params["transfer.target"],
                                                                              "seed": r.seed}) for r in new.runs]
    old = dataclasses.replace(new, axes=[["transfer.target_level"]], runs=old_runs)
    with ResultsStore(tmp_path) as store:
        store.register_sweep(old)
        for sweep in (old, new):
            silently(store.register_sweep, sweep)
            [sw] = silently(store.sweeps)
            assert sw["axes"] == [["transfer.target"]]
            rows = silently(store.rows, sweep="levels")
            assert [get_dotted(r["config"], "transfer.target") for r in rows] == [1, 2]
            assert [r["config"] for r in rows] == [r.config for r in new.runs]
            assert [r["params"] for r in rows] == [r.params for r in new.runs]

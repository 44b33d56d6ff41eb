"""One spelling: run ids hash today's spelling, and `granularity results --migrate`
(granularity.sweeps.migrate, the only code knowing the old spellings) rewrites folders and stores
of a release before the one vocabulary: keys, renamed values and ids, no other value."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from granularity.errors import GranularityError
from granularity.sweeps.kinds import get_kind
from granularity.sweeps.migrate import current, migrate
from granularity.sweeps.spec import expand
from granularity.sweeps.store import ResultsStore
from granularity.utils.config import deep_merge

from sweep_helpers import TINY_BASE

ROOT = Path(__file__).resolve().parents[2]
TRANSFER = {"kind": "transfer", "base": {"bf16": False, "train_size": 100},
            "axes": {"transfer.protocol": ["probe", "map"]}, "seeds": [0]}


def test_run_id_is_the_hash_of_todays_spelling():
    """Recomputed by hand: sha256 of the kind and the config (transfer.protocol: probe) without
    the run-only fields."""
    run = expand(TRANSFER).runs[0]
    cfg = json.loads(json.dumps(run.config))
    assert cfg["transfer"]["protocol"] == "probe" and "mode" not in cfg["transfer"]
    for key in ("workers", "save_checkpoints", "checkpoint_every_steps", "progress_every_s", "eval_every_epoch", "device"):
        cfg.pop(key, None)
    canon = json.dumps({"kind": "transfer", "config": cfg}, sort_keys=True, separators=(",", ":"))
    assert run.run_id == hashlib.sha256(canon.encode()).hexdigest()[:16]


@pytest.mark.parametrize("axes,match", [
    ({"transfer.mode": ["finetune", "linear"]}, "Unknown config key 'transfer.mode'"),
    ({"transfer.protocol": ["linear"]}, "Invalid value for 'transfer.protocol'"),
])
def test_old_spellings_in_a_sweep_are_one_error(axes, match):
    with pytest.raises(GranularityError, match=match) as exc:
        expand({**TRANSFER, "axes": axes})
    assert "\n" not in str(exc.value)
    with pytest.raises(GranularityError, match=r"Unknown config key 'transfer.target_level' \(did you mean 'target'"):
        expand({"kind": "simulate", "base": TINY_BASE, "axes": {"transfer.target_level": [1]}, "seeds": 1})


def test_current_maps_each_old_spelling_and_nothing_else():
    assert current({"transfer": {"mode": "linear", "lr": 0.1}, "target_level": 2}) == {
        "transfer": {"protocol": "probe", "lr": 0.1}, "target_level": 2}  # a result's target_level is today's key
    assert current({"transfer_mode": "linear", "target_error": 0.25}) == {"protocol": "probe", "target_error": 0.25}
    assert current({"transfer": {"target_level": 2, "sources": ["coarse"]}}) == {"transfer": {"target": 2, "sources": ["coarse"]}}
    assert current({"transfer.mode": "linear", "data.k": 4}) == {"transfer.protocol": "probe", "data.k": 4}
    assert current({"axes": {"transfer.mode": ["finetune", "linear"]}}) == {"axes": {"transfer.protocol": ["finetune", "probe"]}}
    flat = {"kmeans_sizes": [8], "rare_sources": ["leaf"], "dataset": "fashion-mnist", "target": 2, "seeds": [0],
            "transfer": {"mode": "map"}}
    assert current(flat) == {"kmeans_sizes": [8], "rare_sources": ["leaf"], "seeds": [0],
                             "run": {"dataset": "fashion-mnist", "target": 2, "transfer": {"protocol": "map"}}}
    design = {"modes": ["map", "linear"], "primary": {"mode": "linear"}, "table": [{"mode": "map", "transfer": "linear-n100"}]}
    assert current(design) == {"protocols": ["map", "probe"], "primary": {"protocol": "probe"},
                               "table": [{"protocol": "map", "transfer": "probe-n100"}]}
    other = {"mode": "wal", "modes": ["a"], "transfer": "linear-nx"}  # not a protocol: left as it is
    assert current(other) == other


def test_migrate_a_design_folder(tmp_path):
    """A design's transfer folder and results.csv: renamed folder and column, values as they were."""
    run = tmp_path / "target-seed0" / "linear-n500"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"mode": "linear", "errors": {"test_hard": 0.052}}))
    (tmp_path / "results.csv").write_text("cell,mode,p_t\nconfusable,linear,1.7171249169983364e-59\nconfusable,map,0.5\n")
    migrate(tmp_path)
    assert not run.exists()
    assert json.loads((run.parent / "probe-n500" / "result.json").read_text()) == {"protocol": "probe", "errors": {"test_hard": 0.052}}
    assert (tmp_path / "results.csv").read_text() == "cell,protocol,p_t\nconfusable,probe,1.7171249169983364e-59\nconfusable,map,0.5\n"


def _old_store(tmp_path: Path):
    """A store as the release before the renames left it: configs and axes in the old spelling,
    run ids of that release (made up here), run folders named by them."""
    spec = {"kind": "simulate", "base": deep_merge(TINY_BASE, {"data": {"deeper": [2], "k": 2}}),
            "axes": {"transfer.target": [1, 2]}, "seeds": 1, "name": "levels"}
    sweep = expand(spec)
    with ResultsStore(tmp_path) as store:
        store.register_sweep(sweep)
        new_rows = store.rows(sweep="levels")
    db = sqlite3.connect(tmp_path / "index.sqlite")
    for i, r in enumerate(sweep.runs):
        old_cfg = json.loads(json.dumps(r.config))
        old_cfg["transfer"]["target_level"] = old_cfg["transfer"].pop("target")
        params = json.dumps({"transfer.target_level": r.params["transfer.target"], "seed": r.seed})
        db.execute("UPDATE runs SET run_id=?, config=?, params=? WHERE run_id=?", (f"old{i}", json.dumps(old_cfg), params, r.run_id))
        db.execute("UPDATE sweep_runs SET run_id=?, params=? WHERE run_id=?", (f"old{i}", params, r.run_id))
        (tmp_path / "runs" / f"old{i}").mkdir(parents=True)
        (tmp_path / "runs" / f"old{i}" / "marker.txt").write_text(str(i))
    old_spec = {**spec, "axes": {"transfer.target_level": [1, 2]}}
    db.execute("UPDATE sweeps SET axes=?, spec=?", (json.dumps([["transfer.target_level"]]), json.dumps(old_spec)))
    db.commit()
    db.close()
    return sweep, new_rows


def test_migrate_a_store_of_an_old_release(tmp_path):
    sweep, new_rows = _old_store(tmp_path)
    changed = migrate(tmp_path)
    assert any("index.sqlite" in c for c in changed)
    with ResultsStore(tmp_path, create=False) as store:
        [sw] = store.sweeps()
        assert sw["axes"] == [["transfer.target"]] and sw["spec"]["axes"] == {"transfer.target": [1, 2]}
        assert sw["run_ids"] == [r.run_id for r in sweep.runs]
        rows = store.rows(sweep="levels")
    assert [r["run_id"] for r in rows] == [r.run_id for r in sweep.runs]
    assert [r["config"] for r in rows] == [r["config"] for r in new_rows] == [r.config for r in sweep.runs]
    assert [r["params"] for r in rows] == [r.params for r in sweep.runs]
    for i, r in enumerate(sweep.runs):  # each run folder under its new id
        assert (tmp_path / "runs" / r.run_id / "marker.txt").read_text() == str(i)
    assert migrate(tmp_path) == [str(tmp_path / "index.sqlite")]  # once: nothing else left to change


def test_migrate_the_committed_simulate_folder(tmp_path):
    """docs/results/simulate-paper is in today's spelling with today's hash; the same folder as
    the release before the renames wrote it (transfer.target_level, hash bca8e341fb01673a)
    migrates back to the committed files byte for byte."""
    from granularity.theory.config import SimConfig
    from granularity.theory.experiment import config_hash

    src = ROOT / "docs/results/simulate-paper"
    result = json.loads((src / "result.json").read_text())
    config = json.loads((src / "config.json").read_text())
    assert result["config_hash"] == config_hash(SimConfig.build(config))
    folder = shutil.copytree(src, tmp_path / "paper")
    assert migrate(folder) == []
    config["transfer"]["target_level"] = config["transfer"].pop("target")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "result.json").write_text(json.dumps({**result, "config_hash": "bca8e341fb01673a"}))
    assert sorted(migrate(folder)) == [str(folder / "config.json"), str(folder / "result.json")]
    for name in ("config.json", "result.json"):
        assert (folder / name).read_bytes() == (src / name).read_bytes()


def test_migrate_refuses_what_is_not_a_folder(tmp_path):
    with pytest.raises(GranularityError, match="is not a folder"):
        migrate(tmp_path / "nope")


def test_old_transfer_run_folder_resumes_after_migrate(tmp_path):
    """A finished engine run folder whose config.json and result.json say transfer.mode: linear,
    transfer_mode: linear is refused as another config, and after the migration is the same run."""
    from engine.conftest import tiny_config, tiny_dataset

    from granularity.engine.run import run_transfer

    ds = tiny_dataset()
    cfg = tiny_config(transfer={"protocol": "probe", "epochs": 1, "batch_size": 16, "lr": 0.02})
    first = run_transfer(cfg, tmp_path / "r", dataset=ds)
    path, res = tmp_path / "r" / "config.json", tmp_path / "r" / "result.json"
    stored = json.loads(path.read_text())
    stored["transfer"]["mode"] = {"probe": "linear"}[stored["transfer"].pop("protocol")]
    path.write_text(json.dumps(stored))
    result = json.loads(res.read_text())
    result["transfer_mode"] = {"probe": "linear"}[result.pop("protocol")]
    res.write_text(json.dumps(result))
    with pytest.raises(GranularityError, match="another config"):
        run_transfer(cfg, tmp_path / "r", dataset=ds)
    migrate(tmp_path / "r")
    assert run_transfer(cfg, tmp_path / "r", dataset=ds) == first

"""The level of the target task is `transfer.target` in the simulator, as `target` in the engine.
The old `transfer.target_level` is an unknown key (config, file, --set, phase axis); the config
hash is the hash of today's dump; run and phase folders of the release before the rename are
read after `granularity results --migrate` rewrote them (granularity.sweeps.migrate)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from granularity.errors import GranularityError
from granularity.sweeps.migrate import migrate
from granularity.theory.config import SimConfig
from granularity.theory.experiment import config_hash, simulate
from granularity.theory.presets import resolve_config
from granularity.utils.config import deep_merge

from fakes import TINY_SIM  # tests/ is on sys.path

# a 3-level tree small enough to train in a second (2 x 2 x 2 leaves)
TINY3 = deep_merge(TINY_SIM, {"data": {"k": 2, "deeper": [2], "P": 8}, "seeds": 1, "seed_batch": 1,
                              "transfer": {"protocols": ["map"], "sources": ["coarse", "fine"]}})
UNKNOWN = r"Unknown config key 'transfer.target_level' \(did you mean 'target'"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_the_old_key_is_an_unknown_key(tmp_path):
    with pytest.raises(GranularityError, match=UNKNOWN):
        SimConfig.build({"transfer": {"target_level": 2}})
    path = tmp_path / "c.yaml"
    path.write_text("transfer:\n  target_level: 2\n")
    for config, sets in ((path, ()), (None, ["transfer.target_level=2"])):
        with pytest.raises(GranularityError, match=UNKNOWN):
            resolve_config("deep", config, sets)


def test_config_hash_is_the_hash_of_todays_dump():
    """Recomputed by hand: sha256 of the dump (transfer.target) without run-only fields."""
    cfg, _ = resolve_config("deep", None, ["transfer.target=2", "transfer.sources=[coarse,fine]"])
    d = cfg.to_dict()
    assert d["transfer"]["target"] == 2 and "target_level" not in d["transfer"]
    for key in ("seeds", "seed_batch", "device", "name", "checkpoint_every"):
        d.pop(key)
    assert config_hash(cfg) == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def test_old_run_folder_resumes_after_migrate(tmp_path):
    """A folder whose config.json says transfer.target_level (and whose records carry that
    release's hash) is refused; migrated, a rerun with one more seed reuses the finished seed."""
    cfg = SimConfig.build(deep_merge(TINY3, {"transfer": {"target": 2}}))
    first = simulate(cfg, tmp_path, progress=False, figures=False)
    stored = json.loads((tmp_path / "config.json").read_text())
    stored["transfer"]["target_level"] = stored["transfer"].pop("target")
    (tmp_path / "config.json").write_text(json.dumps(stored))
    for p in [tmp_path / "result.json", *(tmp_path / "seeds").glob("seed_*.json")]:
        p.write_text(json.dumps({**json.loads(p.read_text()), "config_hash": "0123456789abcdef"}))
    with pytest.raises(GranularityError, match="different config"):
        simulate(cfg, tmp_path, progress=False, figures=False)
    migrate(tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["config_hash"] == config_hash(cfg)
    seed0 = (tmp_path / "seeds" / "seed_0.json").stat().st_mtime_ns
    more = simulate(cfg.model_copy(update={"seeds": 2}), tmp_path, progress=False, figures=False)
    assert more["config_hash"] == first["config_hash"] and more["seeds"] == [0, 1]
    assert more["errors"]["fine"]["map"]["hard"]["values"][0] == first["errors"]["fine"]["map"]["hard"]["values"][0]
    assert (tmp_path / "seeds" / "seed_0.json").stat().st_mtime_ns == seed0  # not recomputed


def test_phase_old_axis_is_one_error_and_an_old_phase_folder_migrates(cli, tmp_path):
    """`phase --x transfer.target_level=1,2`: exit 2, one line; a phase folder made before the
    rename (old key in phase_spec.json, cells named target_level=...) is migrated: cells renamed,
    keys in today's spelling, and it resumes without training."""
    args = ["phase", "--preset", "quick", "--seeds", "1", "--quiet", "--out", tmp_path / "p", "--protocol", "map",
            "--x", "transfer.target=1,2", "--y", "data.sigma=0.1"]
    for s in ("data.d=32", "data.P=8", "data.k=2", "data.deeper=[2]", "model.m=3", "train.n_train=40", "train.steps=4",
              "train.batch_size=16", "train.log_points=2", "transfer.n_test=20", "transfer.protocols=[map]"):
        args += ["--set", s]
    old_args = [a if a != "transfer.target=1,2" else "transfer.target_level=1,2" for a in args]
    code, _, err = cli(*old_args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'transfer.target_level'" in err, err
    code, _, err = cli(*args)
    assert code == 0, err
    phase = json.loads((tmp_path / "p" / "phase.json").read_text())

    old = tmp_path / "old"  # the same folder as the release before the rename left it
    shutil.copytree(tmp_path / "p", old)
    for level in (1, 2):
        (old / "cells" / f"target={level}__sigma=0.1").rename(old / "cells" / f"target_level={level}__sigma=0.1")
    spec = json.loads((old / "phase_spec.json").read_text())
    spec["x"][0] = "transfer.target_level"
    (old / "phase_spec.json").write_text(json.dumps(spec))
    (old / "phase.json").write_text(json.dumps({**phase, "x_key": "transfer.target_level"}))
    migrate(old)
    assert sorted(p.name for p in (old / "cells").iterdir()) == ["target=1__sigma=0.1", "target=2__sigma=0.1"]
    assert json.loads((old / "phase_spec.json").read_text())["x"][0] == "transfer.target"
    assert json.loads((old / "phase.json").read_text()) == phase
    stamps = {p: p.stat().st_mtime_ns for p in (old / "cells").glob("*/seeds/seed_0.json")}
    assert len(stamps) == 2
    code, _, err = cli(*[old if a == tmp_path / "p" else a for a in args])
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in (old / "cells").glob("*/seeds/seed_0.json")} == stamps  # not retrained

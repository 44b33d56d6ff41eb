"""Run ids across the renames of granularity.vocabulary: old and new spellings of a sweep give
the same ids, which are the ids the release before the renames gave (pinned), so stores and
run folders made before the renames are found and resumed; stored configs and filters in the
old spelling are read in the new one."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest

from granularity.sweeps.spec import expand
from granularity.utils.deprecation import GranularityDeprecationWarning

# ids printed by the release before the renames (commit aeca12c) for these two sweeps
OLD_TRANSFER_IDS = ["798c602423f78f2e", "fdde44847cd169a5", "681a7ac4368c18ca",
                    "37aaca045edcca9f", "9de0a9f2e93f35b2", "959a2b741df42178"]
OLD_SIM_IDS = ["9a978e350dea3563", "7ad5913a5e6dc238"]


def sweep(axis_key: str, values: list[str]):
    # bf16 pinned to the default of that release: the default is now "auto" (other arithmetic,
    # so other ids, by design); with the same settings the ids must not move
    return expand({"kind": "transfer", "preset": "study-quick", "base": {"bf16": False}, "axes": {axis_key: values},
                   "seeds": [0, 1]})


def test_old_and_new_spellings_give_the_ids_of_before_the_rename():
    new = sweep("transfer.protocol", ["finetune", "probe", "map"])
    with pytest.warns(GranularityDeprecationWarning) as rec:
        old = sweep("transfer.mode", ["finetune", "linear", "map"])
    assert len(rec) == 1 and "transfer.protocol: ['finetune', 'probe', 'map']" in str(rec[0].message)
    assert [r.run_id for r in new.runs] == [r.run_id for r in old.runs] == OLD_TRANSFER_IDS
    assert [r.config for r in new.runs] == [r.config for r in old.runs]
    assert old.axis_keys == ["transfer.protocol"]
    assert [r.params["transfer.protocol"] for r in old.runs] == ["finetune", "finetune", "probe", "probe", "map", "map"]
    sim = expand({"kind": "simulate", "preset": "quick", "axes": {"data.k": [2, 4]}, "seeds": 1})
    assert [r.run_id for r in sim.runs] == OLD_SIM_IDS


def test_run_id_is_the_hash_of_the_first_spelling():
    """Recomputed by hand: sha256 of the kind and the config with transfer.mode/linear, without
    the run-only fields."""
    run = sweep("transfer.protocol", ["probe"]).runs[0]
    cfg = json.loads(json.dumps(run.config))
    assert cfg["transfer"]["protocol"] == "probe"
    cfg["transfer"]["mode"] = "linear"
    del cfg["transfer"]["protocol"]
    for key in ("workers", "save_checkpoints", "checkpoint_every_steps", "progress_every_s", "eval_every_epoch", "device"):
        cfg.pop(key, None)
    canon = json.dumps({"kind": "transfer", "config": cfg}, sort_keys=True, separators=(",", ":"))
    assert run.run_id == hashlib.sha256(canon.encode()).hexdigest()[:16]


def test_store_reads_old_configs_and_filters_in_the_new_spelling(tmp_path):
    from granularity.sweeps.kinds import get_kind
    from granularity.sweeps.query import apply_filters

    kind = get_kind("transfer")
    run = sweep("transfer.protocol", ["probe"]).runs[0]
    old = kind.id_form(run.config)  # a config.json as the release before the rename wrote it
    assert old["transfer"]["mode"] == "linear" and "protocol" not in old["transfer"]
    assert kind.read_config(old) == run.config and kind.result_config(old) == kind.result_config(run.config)
    import pandas as pd

    df = pd.DataFrame({"transfer.protocol": ["probe", "finetune"], "run_id": ["a", "b"]})
    with pytest.warns(GranularityDeprecationWarning) as rec:
        kept = apply_filters(df, ("transfer.mode=linear",))
    assert list(kept["run_id"]) == ["a"] and len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(apply_filters(df, ("transfer.protocol=probe",))["run_id"]) == ["a"]


def test_engine_resumes_a_folder_written_in_the_old_spelling(tmp_path):
    """A run folder whose config.json says transfer.mode: linear is the same run as
    transfer.protocol: probe: finished, it is returned as it is; not another config."""
    from engine.conftest import tiny_config, tiny_dataset

    from granularity.engine.run import run_transfer

    ds = tiny_dataset()
    cfg = tiny_config(transfer={"protocol": "probe", "epochs": 1, "batch_size": 16, "lr": 0.02})
    first = run_transfer(cfg, tmp_path / "r", dataset=ds)
    path = tmp_path / "r" / "config.json"
    stored = json.loads(path.read_text())
    stored["transfer"]["mode"] = {"probe": "linear"}[stored["transfer"].pop("protocol")]
    path.write_text(json.dumps(stored))
    again = run_transfer(cfg, tmp_path / "r", dataset=ds)
    assert again == first
    with pytest.raises(Exception, match="another config"):
        run_transfer(tiny_config(transfer={"protocol": "map", "epochs": 1, "batch_size": 16, "lr": 0.02}), tmp_path / "r", dataset=ds)

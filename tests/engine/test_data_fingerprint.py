"""Runs that know their data (issue 11 item 4): the fingerprint recorded in result.json and the
checkpoint, and a run folder never reused (returned or resumed) for other data."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from granularity.data.fingerprint import data_fingerprint, files_stamp
from granularity.engine import run_transfer
from granularity.errors import GranularityError

from .conftest import tiny_config, tiny_dataset

FAST = {"pretrain": {"epochs": 1, "batch_size": 16, "lr": 0.05}, "transfer": {"epochs": 1, "batch_size": 16, "lr": 0.02}}


def test_result_records_the_data_fingerprint(tiny, tmp_path):
    res = run_transfer(tiny_config(**FAST), tmp_path / "a", dataset=tiny)
    fp = res["data"]
    assert (fp["name"], fp["n_train"], fp["n_test"]) == ("tiny", 96, 48)
    assert fp["hierarchy_hash"] == tiny.hierarchy.content_hash == res["hierarchy_hash"]
    # the content hash, recomputed independently from the tensors' bytes
    h = hashlib.sha256()
    for x in (tiny.train.x, tiny.test.x):
        a = x.numpy()
        h.update(f"{a.dtype.str}{a.shape}".encode() + a.tobytes())
    assert fp["content_sha256"] == h.hexdigest()
    assert torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["data"] == fp


def test_fingerprint_sees_one_pixel_one_label_and_the_hierarchy(tiny):
    base = data_fingerprint(tiny)["fingerprint"]
    assert data_fingerprint(tiny_dataset())["fingerprint"] == base  # same content, another object
    px = tiny_dataset()
    px.test.x[3, 0, 0, 0] += 1
    lab = tiny_dataset()
    lab.train.y[0] = 1 - lab.train.y[0]
    from granularity.hierarchy import LabelHierarchy

    hier = tiny_dataset()
    hier.hierarchy = LabelHierarchy.from_paths([["g0", "a"], ["g1", "b"], ["g0", "c"], ["g1", "d"]], name="tiny")
    got = {data_fingerprint(d)["fingerprint"] for d in (px, lab, hier)}
    assert base not in got and len(got) == 3
    assert data_fingerprint(tiny, {"image_size": 8})["fingerprint"] != base  # options are part of it


def test_finished_folder_refuses_another_dataset(tiny, tmp_path):
    """Before: the rerun with other data silently returned the first data set's result."""
    cfg = tiny_config(**FAST)
    first = run_transfer(cfg, tmp_path / "r", dataset=tiny)
    other = tiny_dataset(seed=1)  # same name, sizes and classes; other pixels
    with pytest.raises(GranularityError, match=r"holds a run on other data \(result.json.*differs in content_sha256\)"):
        run_transfer(cfg, tmp_path / "r", dataset=other)
    assert run_transfer(cfg, tmp_path / "r", dataset=tiny_dataset())["target_acc"] == first["target_acc"]  # same data: returned


def test_interrupted_folder_refuses_to_resume_on_another_dataset(tiny, tmp_path):
    cfg = tiny_config(**FAST)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(cfg, tmp_path / "r", dataset=tiny, stop_after_steps=8)  # after the pretraining epoch
    with pytest.raises(GranularityError, match=r"holds a run on other data \(checkpoint.pt.*differs in .*labels_sha256"):
        bad = tiny_dataset()
        bad.train.y[:] = bad.train.y.flip(0)
        run_transfer(cfg, tmp_path / "r", dataset=bad)
    assert "target_acc" in run_transfer(cfg, tmp_path / "r", dataset=tiny)


def test_table_file_changed_between_runs(tmp_path):
    """File-based data: a changed table under the same path and config is refused by the engine,
    and a sweep's completeness check (the cheap file stamp) no longer counts the cell as done."""
    import pandas as pd

    from granularity.engine import TransferConfig
    from granularity.sweeps.kinds import get_kind

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"g": np.repeat(["a", "b"], 40), "s": np.repeat(["a1", "a2", "b1", "b2"], 20),
                       "f0": rng.normal(size=80), "f1": rng.normal(size=80)})
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    cfg = TransferConfig.build({**tiny_config(**FAST), "dataset": "table", "data_root": str(path),
                                "data_options": {"label_columns": ["g", "s"]},
                                "model": {"name": "mlp", "options": {"hidden": 8}}, "target": 1})
    res = run_transfer(cfg, tmp_path / "r")
    assert res["data"]["files"] == files_stamp(path) and res["data"]["root"] == str(path)
    kind = get_kind("transfer")
    assert kind.is_complete(tmp_path / "r", cfg)
    df.loc[0, "f0"] += 1.0
    df.to_csv(path, index=False)
    os.utime(path, ns=(1, 1))  # a new mtime even on coarse-grained file systems
    assert not kind.is_complete(tmp_path / "r", cfg)
    with pytest.raises(GranularityError, match="holds a run on other data.*differs in content_sha256"):
        run_transfer(cfg, tmp_path / "r")

"""A transfer sweep end to end on tiny fake Fashion-MNIST files: a diverging learning rate is
recorded as a failed run (not an ok run with chance-level metrics) and the sweep exits 1."""

from __future__ import annotations

import pytest
import yaml

from granularity.sweeps.store import ResultsStore


def test_a_diverging_transfer_run_is_recorded_as_failed(tmp_path, cli, make_fmnist):
    spec = {
        "kind": "transfer",
        "base": {"data_root": str(make_fmnist(60, 30)), "train_size": None, "test_size": None, "device": "cpu",
                 "model": {"options": {"width": 2}},
                 "pretrain": {"epochs": 1, "batch_size": 16}, "transfer": {"epochs": 1, "batch_size": 16}},
        "axes": {"pretrain.lr": [0.05, 1e12]},
        "seeds": 1,
    }
    file = tmp_path / "lr.yaml"
    file.write_text(yaml.safe_dump(spec))
    store = tmp_path / "store"
    code, out, err = cli("sweep", file, "--out", store, "--workers", 2, "--threads", 1, "--quiet")
    with ResultsStore(store, create=False) as st:
        rows = {r["params"]["pretrain.lr"]: r for r in st.rows()}
    assert rows[0.05]["status"] == "ok" and 0 <= rows[0.05]["metrics"]["target_error"] <= 1, rows[0.05]
    assert rows[1e12]["status"] == "failed", rows[1e12]["metrics"]
    assert "non-finite training loss" in rows[1e12]["error"]  # the engine's own reason
    assert code == 1 and err.strip().splitlines()[-1].startswith("granularity: 1 of 2 runs failed")

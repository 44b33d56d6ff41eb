"""A run whose loss goes non-finite fails with its reason (issue 21): ``run_transfer`` raises
:class:`RunFailedError`, ``failed.json`` records why, no ``result.json`` with chance-level
metrics is written; the CLI exits 1 with one line; under DDP every rank stops together."""

from __future__ import annotations

import json

import pytest
import torch

from granularity.engine import run_transfer
from granularity.errors import RunFailedError

from .conftest import tiny_config


@pytest.mark.parametrize("protocol", ["finetune", "probe"])
def test_non_finite_loss_fails_the_run_with_its_reason(tiny, tmp_path, protocol):
    cfg = tiny_config(pretrain={"epochs": 2, "batch_size": 16, "lr": 1e12},
                      transfer={"epochs": 1, "batch_size": 16, "protocol": protocol})
    with pytest.raises(RunFailedError, match="non-finite training loss .* of pretrain epoch 1; lower the learning rate") as err:
        run_transfer(cfg, tmp_path, dataset=tiny)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "result.json").exists()
    rec = json.loads((tmp_path / "failed.json").read_text())
    assert "non-finite training loss" in rec["error"] and rec["config"]["pretrain"]["lr"] == 1e12


def test_non_finite_loss_in_the_transfer_stage(tiny, tmp_path):
    cfg = tiny_config(transfer={"epochs": 1, "batch_size": 16, "lr": 1e12, "optimizer": "sgd"})
    with pytest.raises(RunFailedError, match="of transfer epoch 1"):
        run_transfer(cfg, tmp_path, dataset=tiny)
    assert not (tmp_path / "result.json").exists()


def test_cli_exits_1_with_the_reason(cli, make_fmnist, tmp_path):
    root = make_fmnist(100, 50)
    code, out, err = cli("transfer", "--data-root", root, "--train-size", "100", "--epochs", "1", "--transfer-epochs", "1",
                         "--set", "model.options.width=4", "--set", "pretrain.lr=1e12", "--set", "pretrain.batch_size=16", "--device", "cpu",
                         "--out", tmp_path / "r")
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("granularity: error: transfer run stopped: non-finite training loss")
    assert (tmp_path / "r" / "failed.json").exists() and not (tmp_path / "r" / "result.json").exists()


DRIVER = """
import sys
from granularity.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_ranks_stop_together(make_fmnist, tmp_path):
    """All-reduced with the epoch's metrics: both ranks raise after the same epoch, none hangs."""
    from .test_distributed import _torchrun

    root = make_fmnist(100, 50)
    (tmp_path / "drive.py").write_text(DRIVER)
    args = [str(tmp_path / "drive.py"), "transfer", "--data-root", str(root), "--train-size", "100", "--epochs", "1",
            "--transfer-epochs", "1", "--set", "model.options.width=4", "--set", "pretrain.lr=1e12", "--set", "pretrain.batch_size=16",
            "--device", "cpu", "--out", str(tmp_path / "ddp")]
    proc = _torchrun(args, tmp_path, timeout=180, retry_exit_abort=False)  # a failure is the point here
    assert proc.returncode != 0
    assert proc.stderr.count("granularity: error: transfer run stopped: non-finite training loss") == 2, proc.stderr[-3000:]
    assert "summed over ranks" in proc.stderr
    assert (tmp_path / "ddp" / "failed.json").exists() and not (tmp_path / "ddp" / "result.json").exists()

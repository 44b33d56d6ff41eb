"""`--device mps` where torch has it; an absent cuda/mps is a one-line error; auto never needs a GPU."""

from __future__ import annotations

import pytest
import torch

from granularity.errors import GranularityError
from granularity.utils import device as D


def test_absent_devices_are_one_line_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "mps_available", lambda: False)
    with pytest.raises(GranularityError, match=r"^The 'device' parameter is 'cuda' but no CUDA device"):
        D.resolve_device("cuda")
    with pytest.raises(GranularityError, match=r"'cuda:1' but no CUDA device"):
        D.resolve_device("cuda:1")
    with pytest.raises(GranularityError, match=r"^The 'device' parameter is 'mps' but no MPS device .*use 'auto' or 'cpu'\.$"):
        D.resolve_device("mps")
    assert D.resolve_device("auto") == torch.device("cpu")


def test_mps_when_torch_has_it(monkeypatch):
    monkeypatch.setattr(D, "mps_available", lambda: True)
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    assert D.resolve_device("mps") == torch.device("mps")
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "0")
    with pytest.warns(RuntimeWarning, match="PYTORCH_ENABLE_MPS_FALLBACK=1"):
        D.resolve_device("mps")
    # auto stays on CUDA/CPU: MPS only when asked for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device("auto") == torch.device("cpu")


def test_configs_and_cli_accept_mps(cli, monkeypatch, tmp_path):
    from granularity.engine.config import TransferConfig
    from granularity.theory.config import SimConfig

    assert SimConfig(device="mps").device == "mps"
    assert TransferConfig(device="mps").device == "mps"
    monkeypatch.setattr(D, "mps_available", lambda: False)
    code, out, err = cli("simulate", "--preset", "quick", "--seeds", "1", "--set", "device=mps",
                         "--set", "train.steps=2", "--quiet", "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "no MPS device is available" in err, err

"""Same config and seed give identical metrics on the CPU (documented in docs/reliability.md);
``deterministic: true`` sets torch's deterministic mode only while the run lasts."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from granularity.engine import run_transfer
from granularity.utils.device import bf16_fast

from .conftest import run_files, tiny_config


BF16_CPU = bf16_fast(torch.device("cpu"))


@pytest.mark.parametrize("bf16", [False, pytest.param(True, marks=pytest.mark.skipif(not BF16_CPU, reason="no AVX512-BF16/AMX"))])
@pytest.mark.parametrize("source,mode", [("leaf", "finetune"), ("kmeans-within:4", "probe")])
def test_same_config_and_seed_identical_on_cpu(tiny, tmp_path, source, mode, bf16):
    """In each precision (channels-last on the CPU in both): float32, and bf16 autocast (the default where the CPU has it)."""
    cfg = tiny_config(source=source, transfer={"epochs": 1, "batch_size": 16, "lr": 0.02, "protocol": mode}, bf16=bf16)
    a, b = tmp_path / "a", tmp_path / "b"
    run_transfer(cfg, a, dataset=tiny)
    run_transfer({**cfg, "deterministic": True}, b, dataset=tiny)
    ra, ma, pa = run_files(a)
    rb, mb, pb = run_files(b)
    assert rb["precision"].pop("deterministic_algorithms") is True
    assert ra["precision"]["bf16_autocast"] is bf16 and ra["precision"]["channels_last"] is True  # NHWC on the CPU
    assert "deterministic_algorithms" not in ra["precision"]
    assert ra == rb and ma == mb  # every metric, bit for bit
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


def test_deterministic_flag_is_restored_after_the_run(tiny, tmp_path):
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    seen = []
    import granularity.engine.run as run_mod

    orig = run_mod._run_transfer

    def spy(*a, **k):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))
        return orig(*a, **k)

    run_mod._run_transfer = spy
    try:
        run_transfer(tiny_config(deterministic=True, pretrain={"epochs": 1, "batch_size": 16}), tmp_path / "r", dataset=tiny)
    finally:
        run_mod._run_transfer = orig
    assert seen == [(True, False)]
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before

"""Cheaper evaluation without other numbers: CPU chunking, one exp for every level map,
evaluating only each stage's last epoch, and the map transfer reusing the pretraining's pass."""

import json

import numpy as np
import pytest
import torch

import granularity.engine.stages as engine_stages
import granularity.engine.train as engine_train
from granularity.engine import run_transfer
from granularity.engine.train import group_logits, predict, predict_levels
from granularity.models import create_model
from granularity.utils.io import read_jsonl

from .conftest import tiny_config


def _model(bf16: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model("cnn", (1, 8, 8), 12, width=4)
    m.train()
    with torch.no_grad():  # running statistics away from their init
        m(torch.randn(64, 1, 8, 8))
    m.eval()
    return m.to(memory_format=torch.channels_last) if bf16 else m


@pytest.mark.parametrize("bf16", [False, True])
def test_cpu_chunking_gives_the_same_outputs_as_whole_batches(monkeypatch, bf16):
    """Equal up to float rounding (a kernel may pick another blocking for another row count),
    and bit-identical from one call to the next."""
    m, x = _model(bf16), torch.randint(0, 255, (300, 1, 8, 8), dtype=torch.uint8)
    norm = lambda xb: xb.float() / 255  # noqa: E731
    cpu = torch.device("cpu")
    chunked = predict(m, x, norm, 1000, cpu, bf16)
    monkeypatch.setattr(engine_train, "CPU_EVAL_CHUNK", 10**9)  # one forward per batch
    whole = predict(m, x, norm, 1000, cpu, bf16)
    assert chunked.shape == (300, 12)
    tol = {"rtol": 1e-5, "atol": 1e-5} if not bf16 else {"rtol": 2e-2, "atol": 2e-2}  # bf16: 8 mantissa bits
    torch.testing.assert_close(chunked, whole, **tol)
    monkeypatch.setattr(engine_train, "CPU_EVAL_CHUNK", 7)  # a ragged chunking, batches of 64
    ragged = predict(m, x, norm, 64, cpu, bf16)
    torch.testing.assert_close(ragged, whole, **tol)
    torch.testing.assert_close(predict(m, x, norm, 64, cpu, bf16), ragged, rtol=0, atol=0)


def test_shared_exp_equals_one_logsumexp_per_map():
    z = torch.randn(50, 12, dtype=torch.float32) * 30  # large logits: the shift matters
    maps = {1: np.arange(12) // 6, 2: np.arange(12) // 3, 3: np.where(np.arange(12) < 4, -1, np.arange(12) % 2)}
    sizes = {1: 2, 2: 4, 3: 2}
    fn = lambda xb: z[xb[:, 0].long()]  # noqa: E731  (row i -> logits of sample i)
    x = torch.arange(50)[:, None]
    got = predict_levels(fn, x, None, 16, torch.device("cpu"), maps, sizes)
    for lv, gm in maps.items():
        ref = torch.logsumexp(z[:, None, :].expand(-1, sizes[lv], -1).masked_fill(
            torch.as_tensor(gm)[None, None, :] != torch.arange(sizes[lv])[None, :, None], -float("inf")), dim=2)
        torch.testing.assert_close(got[lv], ref, rtol=1e-4, atol=1e-4)  # the row-max shift costs a little precision
        torch.testing.assert_close(got[lv], group_logits(z, gm, sizes[lv]), rtol=0, atol=0)  # bit for bit


def _result(folder):
    res = json.loads((folder / "result.json").read_text())
    for k in ("seconds", "train_seconds"):
        res.pop(k)
    return res, dict(np.load(folder / "predictions.npz"))


@pytest.mark.parametrize("mode", ["finetune", "probe", "map"])
def test_last_epoch_evaluation_only_changes_nothing_but_the_intermediate_lines(tiny, tmp_path, monkeypatch, mode):
    calls = []
    real = engine_stages.predict_levels
    monkeypatch.setattr(engine_stages, "predict_levels", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = tiny_config(pretrain={"epochs": 3, "batch_size": 16, "lr": 0.05}, transfer={"protocol": mode, "epochs": 2, "lr": 0.1})
    run_transfer(cfg, tmp_path / "every", dataset=tiny)
    n_every = len(calls)
    calls.clear()
    run_transfer({**cfg, "eval_every_epoch": False}, tmp_path / "last", dataset=tiny)
    # map: 3 pretraining passes (its final logits are the last one's); otherwise 3 + 2
    assert n_every == (3 if mode == "map" else 5)
    assert len(calls) == (1 if mode == "map" else 2)
    (ra, pa), (rb, pb) = _result(tmp_path / "every"), _result(tmp_path / "last")
    assert ra == rb
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    every = read_jsonl(tmp_path / "every" / "metrics.jsonl")
    last = read_jsonl(tmp_path / "last" / "metrics.jsonl")
    assert [r["epoch"] for r in every] == [r["epoch"] for r in last]
    assert [any(k.startswith("acc_") for k in r) for r in last] == [r["epoch"] == (3 if r["stage"] == "pretrain" else 2) for r in last]
    for a, b in zip(every, last):  # training itself is untouched
        assert (a["train_loss"], a["train_acc"]) == (b["train_loss"], b["train_acc"])


def test_map_after_a_resume_evaluates_again(tiny, tmp_path):
    """A run resumed after pretraining has no pretraining pass in memory: it evaluates."""
    cfg = tiny_config(transfer={"protocol": "map"})
    whole = run_transfer(cfg, tmp_path / "whole", dataset=tiny)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(cfg, tmp_path / "cut", dataset=tiny, stop_after_steps=12)  # 6 steps per epoch: after pretraining
    resumed = run_transfer(cfg, tmp_path / "cut", dataset=tiny)
    assert resumed["target_acc"] == whole["target_acc"] and resumed["levels"] == whole["levels"]

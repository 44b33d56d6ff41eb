"""The engine's memory layout: channels-last (NHWC) on the CPU in every precision, and on CUDA
under bf16; the layout changes only the rounding of the convolutions, never the result beyond it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import granularity.engine.stages as engine_stages
import granularity.engine.train as engine_train
from granularity.engine import run_transfer
from granularity.engine.train import channels_last_active

from .conftest import tiny_config


@pytest.mark.parametrize("bf16", [False, True, "auto"])
def test_the_cpu_is_channels_last_in_every_precision(bf16):
    assert channels_last_active(torch.device("cpu"), bf16) is True


@pytest.mark.parametrize("fast,bf16,expected", [
    (True, True, True), (True, "auto", True), (True, False, False), (False, True, False), (False, "auto", False),
])
def test_cuda_is_channels_last_only_under_bf16(monkeypatch, fast, bf16, expected):
    monkeypatch.setattr(engine_train, "bf16_fast", lambda device: fast)
    assert channels_last_active(torch.device("cuda"), bf16) is expected


def _nhwc(model: torch.nn.Module) -> bool:
    """Whether the model's convolution weights are channels-last (a weight with one input
    channel is contiguous in both layouts; the others tell them apart)."""
    convs = [p for p in model.parameters() if p.ndim == 4]
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in convs) and any(
        not p.is_contiguous() for p in convs)


def _layouts(monkeypatch, module=engine_stages) -> list[bool]:
    """Spy on ``module.train_epoch``: whether each epoch's model was channels-last."""
    seen: list[bool] = []
    orig = module.train_epoch

    def spy(model, *a, **k):
        seen.append(_nhwc(model))
        return orig(model, *a, **k)

    monkeypatch.setattr(module, "train_epoch", spy)
    return seen


def _metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_float32_cpu_run_trains_channels_last_and_matches_the_nchw_run(tiny, tmp_path, monkeypatch):
    cfg = tiny_config(bf16=False, transfer={"epochs": 1, "batch_size": 16, "lr": 0.02, "protocol": "finetune"})
    seen = _layouts(monkeypatch)
    nhwc = run_transfer(cfg, tmp_path / "nhwc", dataset=tiny)
    assert nhwc["precision"] == {"bf16_autocast": False, "channels_last": True, "tf32": False}
    assert seen and all(seen), seen  # pretraining and fine-tuning epochs
    # the same run in PyTorch's default layout: the same numbers up to float32 rounding
    for module in (engine_stages, engine_train):  # the recorded layout and the applied one
        monkeypatch.setattr(module, "channels_last_active", lambda device, bf16: False)
    seen.clear()
    nchw = run_transfer(cfg, tmp_path / "nchw", dataset=tiny)
    assert nchw["precision"]["channels_last"] is False and seen and not any(seen)
    a, b = _metrics(tmp_path / "nhwc"), _metrics(tmp_path / "nchw")
    assert [r.get("stage") for r in a] == [r.get("stage") for r in b]
    losses = [(r["train_loss"], s["train_loss"]) for r, s in zip(a, b) if "train_loss" in r]
    assert losses
    for x, y in losses:
        assert x == pytest.approx(y, rel=1e-4, abs=1e-6)
    pa, pb = np.load(tmp_path / "nhwc" / "predictions.npz"), np.load(tmp_path / "nchw" / "predictions.npz")
    for k in pa.files:
        if np.issubdtype(pa[k].dtype, np.floating):  # margins, probabilities: float32 rounding only
            np.testing.assert_allclose(pa[k], pb[k], rtol=1e-3, atol=1e-4, err_msg=k)
        else:  # predicted classes: a rounding difference may flip a near-tie
            assert np.mean(pa[k] == pb[k]) >= 0.97, k
    assert abs(nhwc["target_acc"] - nchw["target_acc"]) <= 2 / 48


def test_the_embedding_cnn_trains_channels_last_with_the_nchw_features(monkeypatch):
    """``embedding: cnn`` (k-means labels from a CNN's features) trains in the engine's layout;
    its features are those of the NCHW model up to float32 rounding."""
    from granularity.engine.embeddings import compute_embeddings

    seen = _layouts(monkeypatch, engine_train)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = np.arange(64) % 2
    nhwc = compute_embeddings("cnn", x, y, 2, seed=0)
    assert seen == [True, True]  # both epochs
    monkeypatch.setattr(engine_train, "channels_last_active", lambda device, bf16: False)
    seen.clear()
    nchw = compute_embeddings("cnn", x, y, 2, seed=0)
    assert seen == [False, False]
    np.testing.assert_allclose(nhwc, nchw, rtol=1e-3, atol=1e-4)

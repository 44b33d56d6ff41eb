"""Engine on a streamed image folder: same result as in memory, workers, resume, memory check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from granularity.data import Split, StreamSplit
from granularity.data.image_folder import load_image_folder
from granularity.engine import run_transfer
from granularity.engine.run import plan_transfer
from granularity.errors import GranularityError
from granularity.utils.io import read_json, read_jsonl

from .conftest import tiny_config

CLASSES = [f"c{i}" for i in range(10)]
PARENTS = {**{c: f"g{i % 2}" for i, c in enumerate(CLASSES)}, "g0": "root", "g1": "root"}  # 10 leaves in 2 groups


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """10 classes x 6 PNGs (8x8 RGB) in train/ and val/; class i lights up a pixel block."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for i, c in enumerate(CLASSES):
            (root / part / c).mkdir(parents=True)
            for j in range(6):
                img = rng.integers(0, 60, size=(8, 8, 3)).astype(np.uint8)
                r, q = divmod(i, 4)
                img[2 * r : 2 * r + 2, 2 * q : 2 * q + 2, i % 3] += 180
                Image.fromarray(img).save(root / part / c / f"{j}.png")
    return root


def load(root, in_memory):
    return load_image_folder(root, image_size=8, hierarchy=PARENTS, in_memory=in_memory)


def config(**kw):
    base = {"target": 1, "pretrain": {"epochs": 2, "batch_size": 16, "lr": 0.05},
            "transfer": {"epochs": 1, "batch_size": 16, "lr": 0.02}, "eval_batch_size": 25,
            "bf16": False}  # float32: the comparisons below allow float32 noise only
    return tiny_config(**{**base, **kw})


@pytest.fixture(scope="module")
def in_memory_result(folder, tmp_path_factory):
    ds = load(folder, True)
    assert ds.train.in_memory
    out = tmp_path_factory.mktemp("mem")
    return {**run_transfer(config(), out, dataset=ds), "train_loss": train_losses(out)}


def train_losses(out):
    return [m["train_loss"] for m in read_jsonl(out / "metrics.jsonl")]


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_run_matches_in_memory(folder, tmp_path, in_memory_result, workers):
    ds = load(folder, False)
    assert not ds.train.in_memory and not ds.test.in_memory
    r = run_transfer(config(workers=workers), tmp_path, dataset=ds)
    assert (tmp_path / "result.json").exists() and read_json(tmp_path / "result.json") == r
    assert r["dataset"]["n_train"] == 60 and r["dataset"]["n_test"] == 60
    # same images, same permutation and augmentation draws: the same run up to float noise
    assert r["target_acc"] == pytest.approx(in_memory_result["target_acc"], abs=1e-6)
    # every epoch's training loss: the same batches in the same order with the same augmentation
    assert train_losses(tmp_path) == pytest.approx(in_memory_result["train_loss"], rel=1e-5)
    for lv, acc in in_memory_result["pretrain_levels"].items():
        assert r["pretrain_levels"][lv] == pytest.approx(acc, abs=1e-6)


def test_streamed_linear_probe_matches_in_memory(folder, tmp_path):
    cfg = config(transfer={"protocol": "probe", "epochs": 1, "batch_size": 16, "lr": 0.02})
    mem = run_transfer(cfg, tmp_path / "mem", dataset=load(folder, True))
    st = run_transfer(cfg, tmp_path / "st", dataset=load(folder, False))
    assert st["target_acc"] == pytest.approx(mem["target_acc"], abs=1e-6)


def test_streamed_resume_after_interrupted_epoch(folder, tmp_path, in_memory_result):
    ds = load(folder, False)
    with pytest.raises(KeyboardInterrupt):  # 4 steps per epoch: killed inside pretraining epoch 2
        run_transfer(config(), tmp_path, dataset=ds, stop_after_steps=6)
    r = run_transfer(config(), tmp_path, dataset=ds)
    assert r["target_acc"] == pytest.approx(in_memory_result["target_acc"], abs=1e-6)
    assert train_losses(tmp_path) == pytest.approx(in_memory_result["train_loss"], rel=1e-5)
    assert r["levels"] == pytest.approx(in_memory_result["levels"], abs=1e-6)


def test_memory_check_counts_only_batches_for_streamed(folder):
    small = load(folder, False)
    reps = 100  # a 6,000-image training set: the same files listed 100 times (nothing decoded)
    tr = small.train
    big = small._derive(StreamSplit(tr.paths * reps, tr.y.repeat(reps), tr.size, tr.channels), small.test)
    big_mem = small._derive(Split(torch.zeros((len(tr) * reps, 3, 8, 8), dtype=torch.uint8), tr.y.repeat(reps)), small.test)
    pixels = len(tr) * reps * 3 * 8 * 8 * 4  # the big training set as float32
    st, mem = plan_transfer(config(), dataset=big), plan_transfer(config(), dataset=big_mem)
    # streamed: only the labels grow with the training set, not the pixels
    growth = st["memory_estimate_bytes"] - plan_transfer(config(), dataset=small)["memory_estimate_bytes"]
    assert 0 < growth < 8 * len(tr) * reps * 8 < pixels
    assert mem["memory_estimate_bytes"] - st["memory_estimate_bytes"] > 0.9 * pixels
    limit = int((mem["memory_estimate_bytes"] + st["memory_estimate_bytes"]) / 2 / 0.8)
    with pytest.raises(GranularityError, match="memory"):
        plan_transfer(config(), dataset=big_mem, memory_limit=limit)
    plan_transfer(config(), dataset=big, memory_limit=limit)  # fits: not refused


def test_streamed_pca_kmeans_is_refused_in_one_line(folder, tmp_path):
    with pytest.raises(GranularityError, match="embedding 'cnn'") as err:
        run_transfer(config(source="kmeans-within:4"), tmp_path, dataset=load(folder, False))
    assert "\n" not in str(err.value)


def test_streamed_cnn_embedding_kmeans_runs(folder, tmp_path):
    r = run_transfer(config(source="kmeans-within:4", embedding="cnn"), tmp_path, dataset=load(folder, False))
    assert r["num_source_classes"] == 4 and 0 <= r["target_acc"] <= 1


DRIVER = """
import json, sys
from granularity.data.image_folder import load_image_folder
from granularity.engine import run_transfer
cfg, root, out, parents = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
run_transfer(cfg, out, dataset=load_image_folder(root, image_size=8, hierarchy=parents, in_memory=False))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_streamed_two_processes_match_one_process(folder, tmp_path, in_memory_result):
    """2 gloo ranks, each decoding only its rows of every global batch (8/8 and a 6/6 tail)."""
    import json

    from ddp_helpers import torchrun

    (tmp_path / "drive.py").write_text(DRIVER)
    proc = torchrun([str(tmp_path / "drive.py"), json.dumps(config()), str(folder), str(tmp_path / "ddp"),
                     json.dumps(PARENTS)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = read_json(tmp_path / "ddp" / "result.json")
    assert r["world_size"] == 2
    # same global batches and augmentation, global BatchNorm: float summation order only
    assert train_losses(tmp_path / "ddp") == pytest.approx(in_memory_result["train_loss"], abs=1e-3)
    assert abs(r["target_acc"] - in_memory_result["target_acc"]) <= 0.05


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    """1,050 training PNGs, more than any sample the engine or data layer ever took (1,000),
    with the classes' brightness differing so a sample's statistics differ from the whole's."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(1)
    for part, n in (("train", 105), ("val", 3)):
        for i, c in enumerate(CLASSES):
            (root / part / c).mkdir(parents=True)
            for j in range(n):
                img = rng.integers(0, 40 + 20 * i, size=(8, 8, 3)).astype(np.uint8)
                Image.fromarray(img).save(root / part / c / f"{j}.png")
    return root


def test_streamed_matches_in_memory_above_every_sample_size(big_folder, tmp_path):
    """Issue 17 #4: streamed statistics came from a 1,000-image sample (tolerances: docs)."""
    mem, st = load(big_folder, True), load(big_folder, False)
    torch.testing.assert_close(st.mean, mem.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(st.std, mem.std, rtol=0, atol=1e-6)
    cfg = config(pretrain={"epochs": 1, "batch_size": 128, "lr": 0.05}, transfer={"epochs": 1, "batch_size": 128})
    a = run_transfer(cfg, tmp_path / "mem", dataset=mem)
    b = run_transfer(cfg, tmp_path / "st", dataset=st)
    assert train_losses(tmp_path / "st") == pytest.approx(train_losses(tmp_path / "mem"), rel=1e-5)
    assert b["target_acc"] == pytest.approx(a["target_acc"], abs=1e-6)


def test_streamed_resume_mid_epoch_from_step_checkpoints(folder, tmp_path, in_memory_result):
    """Step checkpoints on a streamed split: the DataLoader starts at the checkpoint's batch."""
    ds = load(folder, False)
    for stop in (3, 2, 5):  # 4 steps per epoch: killed after steps 3, 5 and 10 (pretraining epochs 1 and 2, transfer)
        with pytest.raises(KeyboardInterrupt):
            run_transfer(config(checkpoint_every_steps=1), tmp_path, dataset=ds, stop_after_steps=stop)
    r = run_transfer(config(checkpoint_every_steps=1), tmp_path, dataset=ds)
    assert r["target_acc"] == pytest.approx(in_memory_result["target_acc"], abs=1e-6)
    assert train_losses(tmp_path) == pytest.approx(in_memory_result["train_loss"], rel=1e-5)


def test_streamed_fingerprint_follows_the_files(folder, tmp_path):
    """A streamed split is fingerprinted by its files' paths, sizes and mtimes (not decoded)."""
    import os
    import shutil

    from granularity.data.fingerprint import data_fingerprint

    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    ds = load(root, False)
    fp = data_fingerprint(ds)
    assert fp["content"] == "sha256 of the image files' paths, sizes and mtimes"
    assert data_fingerprint(load(root, False))["fingerprint"] == fp["fingerprint"]
    path = ds.train.paths[0]
    os.utime(path, ns=(1, 1))
    assert data_fingerprint(load(root, False))["content_sha256"] != fp["content_sha256"]

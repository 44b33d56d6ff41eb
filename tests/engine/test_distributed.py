"""Data-parallel engine: 2 gloo processes under torchrun against one process on tiny IDX files.

Each torchrun start costs a few seconds (two Python processes importing torch plus the
rendezvous), so the file starts three: the CLI run, an interrupted 2-process run resumed by one
process, and a 1-process run resumed by two processes.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ddp_helpers import torchrun

from granularity.cli.main import main
from granularity.data.idx import write_idx
from granularity.engine import run_transfer
from granularity.engine.distributed import DistContext
from granularity.utils.device import bf16_fast
from granularity.utils.io import read_json, read_jsonl

pytestmark = pytest.mark.skipif(
    # the ranks start with `python -m torch.distributed.run`, so no `torchrun` on PATH is needed
    not torch.distributed.is_available(), reason="needs torch.distributed"
)

# 200 training images, global batch 27: chunks of 14/13 images per rank and a ragged tail of 11
# (6/5), so the uneven-split path is exercised; the width-4 CNN has BatchNorm (synced on 2 ranks)
CFG = {
    "dataset": "fashion-mnist", "train_size": None, "test_size": None, "target": 1, "source": "leaf",
    "model": {"name": "cnn", "options": {"width": 4}},
    "pretrain": {"epochs": 2, "batch_size": 27, "lr": 0.05},
    "transfer": {"epochs": 1, "batch_size": 27, "lr": 0.02},
    "device": "cpu", "eval_batch_size": 64, "bf16": False,  # float32: the comparisons below are float32's
}
TOL = 0.03  # max |difference| of any weight or BatchNorm buffer after 3 epochs, see below
FILES = {"checkpoint.pt", "config.json", "env.json", "metrics.jsonl", "predictions.npz", "result.json"}


@pytest.fixture(scope="module")
def fm_root(tmp_path_factory):
    """Tiny IDX files in the Fashion-MNIST layout: class c is noise brightened by 18c (the CNN's
    global average pooling sees brightness, so the task is learnable in a few steps)."""
    root = tmp_path_factory.mktemp("fm")
    rng = np.random.default_rng(0)
    for part, n in (("train", 200), ("t10k", 100)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = (rng.integers(0, 60, size=(n, 28, 28)) + 18 * y[:, None, None]).astype(np.uint8)
        write_idx(root / f"{part}-images-idx3-ubyte", x)
        write_idx(root / f"{part}-labels-idx1-ubyte", y)
    return root


@pytest.fixture(scope="module")
def single(fm_root, tmp_path_factory):
    """The uninterrupted one-process run everything is compared with."""
    out = tmp_path_factory.mktemp("single") / "run"
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # as the test runs and the torchrun ranks (results depend on it in the last bits)
    try:
        result = run_transfer({**CFG, "data_root": str(fm_root)}, out)
    finally:
        torch.set_num_threads(old)
    return out, result


def _torchrun(args: list[str], cwd: Path, timeout: int = 120, retry_exit_abort: bool = True) -> subprocess.CompletedProcess:
    return torchrun(args, cwd, timeout, retry_exit_abort)


DRIVER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from granularity.engine import run_transfer
    cfg, out, stop = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    try:
        run_transfer(cfg, out, stop_after_steps=stop or None)
    except KeyboardInterrupt:
        # the simulated interruption stands for a killed process: end like one. (A normal exit
        # here sometimes aborts in gloo's threads, "terminate called ...", ~1 run in 5; what is
        # tested is the checkpoint the killed run left.)
        print("interrupted", flush=True)
        os._exit(0)
    """
)


def _weights_diff(a: Path, b: Path) -> float:
    sa = torch.load(a / "checkpoint.pt", weights_only=False)["model"]
    sb = torch.load(b / "checkpoint.pt", weights_only=False)["model"]
    assert sa.keys() == sb.keys()  # same parameter/buffer names: SyncBatchNorm left no trace
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]


def test_two_processes_match_one_process(fm_root, single, tmp_path):
    ref, ref_result = single
    out = tmp_path / "ddp"
    args = ["-m", "granularity", "transfer", "--data-root", str(fm_root), "--source", "leaf", "--target", "1",
            "--epochs", "2", "--transfer-epochs", "1", "--set", "train_size=null", "--set", "model.options.width=4",
            "--set", "pretrain.batch_size=27", "--set", "transfer.batch_size=27", "--set", "transfer.lr=0.02", "--set", "eval_batch_size=64", "--no-bf16",
            "--device", "cpu", "--out", str(out)]
    proc = _torchrun(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("target error") == 1  # rank 0 reports
    assert proc.stdout.count("pretrain epoch 1") == 1
    # only rank 0 wrote: the files of a one-process run, one metrics line per epoch, no probes
    assert {p.name for p in out.iterdir()} == FILES
    assert read_json(out / "config.json") == read_json(ref / "config.json")
    r = read_json(out / "result.json")
    assert r["world_size"] == 2 and ref_result["world_size"] == 1
    rows, ref_rows = read_jsonl(out / "metrics.jsonl"), read_jsonl(ref / "metrics.jsonl")
    assert [(m["stage"], m["epoch"]) for m in rows] == [("pretrain", 1), ("pretrain", 2), ("transfer", 1)]
    # same global batches, global BatchNorm statistics, gradient = global mean: the runs differ
    # only by float summation order. Measured: max |weight/buffer difference| 0.010 against this
    # 1-thread reference, which is the noise floor of one process itself (1 vs 2 torch threads:
    # 0.0098; 2-process vs 2-thread: 0.0005); a per-rank BatchNorm or a wrong gradient scale
    # changes the first epoch's loss in the 2nd decimal
    assert _weights_diff(out, ref) < TOL
    for m, m_ref in zip(rows, ref_rows):
        assert m["train_loss"] == pytest.approx(m_ref["train_loss"], abs=1e-3)
        assert abs(m["train_acc"] - m_ref["train_acc"]) <= 0.02
    assert abs(r["target_acc"] - ref_result["target_acc"]) <= 0.03
    assert ref_result["target_acc"] > 0.7  # a learnable task, so the comparison means something


def test_checkpoint_of_two_processes_resumes_in_one(fm_root, single, tmp_path):
    ref, ref_result = single
    (tmp_path / "driver.py").write_text(DRIVER)
    cfg = {**CFG, "data_root": str(fm_root)}
    out = tmp_path / "cut"
    # 8 steps per epoch: killed in the 2nd pretraining epoch, after the epoch-1 checkpoint
    proc = _torchrun([str(tmp_path / "driver.py"), json.dumps(cfg), str(out), "11"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("interrupted") == 2 and not (out / "result.json").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (ckpt["stage"], ckpt["epoch"]) == ("pretrain", 1)
    resumed = run_transfer(cfg, out)  # one process, from the 2-process checkpoint
    assert resumed["world_size"] == 1
    assert _strip(read_jsonl(out / "metrics.jsonl"))[0]["stage"] == "pretrain"
    assert len(read_jsonl(out / "metrics.jsonl")) == 3
    assert _weights_diff(out, ref) < TOL
    assert abs(resumed["target_acc"] - ref_result["target_acc"]) <= 0.03


def test_checkpoint_of_one_process_resumes_in_two(fm_root, single, tmp_path):
    ref, ref_result = single
    (tmp_path / "driver.py").write_text(DRIVER)
    cfg = {**CFG, "data_root": str(fm_root)}
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):  # killed inside the transfer epoch (16 pretraining steps)
        run_transfer(cfg, out, stop_after_steps=19)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["stage"] == "transfer"
    proc = _torchrun([str(tmp_path / "driver.py"), json.dumps(cfg), str(out), "0"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = read_json(out / "result.json")
    assert r["world_size"] == 2
    assert _strip(read_jsonl(out / "metrics.jsonl"))[:2] == _strip(read_jsonl(ref / "metrics.jsonl"))[:2]
    assert _weights_diff(out, ref) < TOL
    assert abs(r["target_acc"] - ref_result["target_acc"]) <= 0.03


@pytest.mark.parametrize("n,world", [(10, 3), (11, 2), (2, 4), (27, 2)])
def test_shards_partition_rows_like_tensor_split(n, world):
    bounds = [DistContext(rank=r, world_size=world).shard_bounds(n) for r in range(world)]
    expected = [(int(c[0]), int(c[-1]) + 1) if len(c) else None for c in torch.tensor_split(torch.arange(n), world)]
    assert [b if b[1] > b[0] else None for b in bounds] == expected
    assert bounds[0][0] == 0 and bounds[-1][1] == n


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_one_line_error(capsys, tmp_path):
    assert main(["transfer", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'device' parameter is 'cuda'" in err


def test_bf16_without_a_fast_path_is_ignored_and_recorded(fm_root, single, tmp_path, monkeypatch):
    import granularity.engine.train as engine_train

    monkeypatch.setattr(engine_train, "bf16_fast", lambda device: False)  # a CPU without AVX512-BF16/AMX
    _, ref_result = single
    r = run_transfer({**CFG, "data_root": str(fm_root), "bf16": True, "tf32": True}, tmp_path / "bf16")
    assert r["precision"]["bf16_autocast"] is False and r["precision"]["tf32"] is False
    assert "computed in float32" in r["precision"]["note"] and "tf32 applies on CUDA only" in r["precision"]["note"]
    assert r["target_acc"] == ref_result["target_acc"]  # float32 all the same
    assert ref_result["precision"] == {"bf16_autocast": False, "channels_last": True, "tf32": False}  # NHWC on the CPU


def test_bf16_auto_without_a_fast_path_is_float32_without_a_note(fm_root, single, tmp_path, monkeypatch):
    import granularity.engine.train as engine_train

    monkeypatch.setattr(engine_train, "bf16_fast", lambda device: False)  # a CPU without AVX512-BF16/AMX
    _, ref_result = single
    r = run_transfer({**CFG, "data_root": str(fm_root), "bf16": "auto"}, tmp_path / "auto")
    assert r["precision"] == {"bf16_autocast": False, "channels_last": True, "tf32": False}
    assert r["target_acc"] == ref_result["target_acc"]  # float32, bit for bit
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["bf16"] == "auto"


@pytest.mark.skipif(not bf16_fast(torch.device("cpu")), reason="no AVX512-BF16/AMX on this CPU")
def test_bf16_auto_is_the_default_and_autocasts_on_a_bf16_cpu(fm_root, tmp_path):
    cfg = {k: v for k, v in CFG.items() if k != "bf16"}
    r = run_transfer({**cfg, "data_root": str(fm_root), "pretrain": {"epochs": 1, "batch_size": 27}, "transfer": {"epochs": 0}},
                     tmp_path / "default")
    assert r["precision"] == {"bf16_autocast": True, "channels_last": True, "tf32": False}


@pytest.mark.skipif(not bf16_fast(torch.device("cpu")), reason="no AVX512-BF16/AMX on this CPU")
def test_bf16_on_a_bf16_cpu_autocasts_channels_last(fm_root, single, tmp_path):
    _, ref_result = single
    r = run_transfer({**CFG, "data_root": str(fm_root), "bf16": True}, tmp_path / "bf16")
    assert r["precision"] == {"bf16_autocast": True, "channels_last": True, "tf32": False}
    assert abs(r["target_acc"] - ref_result["target_acc"]) <= 0.05, (r["target_acc"], ref_result["target_acc"])


FLAKY = textwrap.dedent(
    """
    import os, pathlib, sys, time
    folder, message = pathlib.Path(sys.argv[1]), sys.argv[2]
    runs = folder / f"runs{os.environ['RANK']}"
    n = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    if n == 1:  # the first launch fails on every rank, once both have counted it
        other = folder / f"runs{1 - int(os.environ['RANK'])}"
        for _ in range(200):
            if other.exists():
                break
            time.sleep(0.05)
        sys.stderr.write(message + "\\n")
        sys.stderr.flush()
        os._exit(134)
    """
)


@pytest.mark.parametrize("message,retry,launches,ok", [
    ("terminate called without an active exception", True, 2, True),  # gloo's exit-time abort: once more
    ("terminate called without an active exception", False, 1, False),
    ("RuntimeError: something else", True, 1, False),  # any other failure is returned as it is
])
def test_torchrun_runs_again_only_after_gloos_exit_abort(tmp_path, message, retry, launches, ok):
    (tmp_path / "flaky.py").write_text(FLAKY)
    proc = _torchrun([str(tmp_path / "flaky.py"), str(tmp_path), message], tmp_path, retry_exit_abort=retry)
    assert (proc.returncode == 0) is ok, proc.stderr[-2000:]
    assert (tmp_path / "runs0").read_text() == (tmp_path / "runs1").read_text() == str(launches)

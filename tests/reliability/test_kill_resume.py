"""SIGKILL at random points, then the same command again: the run continues from its last
checkpoint and ends with results identical to an uninterrupted run (CPU)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
CLI = [sys.executable, "-m", "granularity"]


def run(args, **kw):
    return subprocess.run(CLI + [str(a) for a in args], env=ENV, capture_output=True, text=True, timeout=600, **kw)


def kill_when(args, ready, delay):
    """Start the command, wait until ``ready()`` (a checkpoint exists), wait ``delay`` more
    seconds, SIGKILL its process group. Returns True if it was killed before finishing."""
    proc = subprocess.Popen(CLI + [str(a) for a in args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while proc.poll() is None and not ready() and time.time() - t0 < 300:
        time.sleep(0.05)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


SIM = ["simulate", "--preset", "quick", "--quiet", "--seeds", "3", "--set", "seed_batch=2",
       "--set", "train.steps=300", "--set", "checkpoint_every=20", "--set", "transfer.n_test=200",
       "--set", "transfer.probe_steps=30", "--set", "transfer.finetune_steps=30"]


def test_simulate_sigkill_resume(tmp_path):
    ref = run(SIM + ["--out", tmp_path / "ref"])
    assert ref.returncode == 0, ref.stderr
    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    out = tmp_path / "run"
    rng = random.Random(7)
    kills = 0
    for _ in range(3):  # kill at three random points, each after some checkpoint exists
        ready = lambda: any((out / "partial").glob("*.pt")) or any((out / "seeds").glob("*.json"))  # noqa: E731
        kills += kill_when(SIM + ["--out", out], ready, rng.uniform(0.0, 1.5))
        assert not (out / "result.json").exists() or kills == 0
    assert kills >= 1
    done = run(SIM + ["--out", out])
    assert done.returncode == 0, done.stderr
    got = json.loads((out / "result.json").read_text())
    assert got["errors"] == expected["errors"]
    assert got["alignment_final"] == expected["alignment_final"]


@pytest.fixture
def fmnist_root(make_fmnist):
    return make_fmnist(600, 100)


def test_transfer_sigkill_resume(tmp_path, fmnist_root):
    args = ["transfer", "--data-root", fmnist_root, "--source", "leaf", "--target", "1", "--epochs", "4",
            "--transfer-epochs", "2", "--set", "train_size=null", "--set", "model.options.width=8",
            "--device", "cpu"]
    ref = run(args + ["--out", tmp_path / "ref"])
    assert ref.returncode == 0, ref.stderr
    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    out = tmp_path / "run"
    rng = random.Random(3)
    kills = 0
    for _ in range(3):
        ready = lambda: any(p.suffix == ".pt" for p in out.rglob("*.pt")) if out.exists() else False  # noqa: E731
        kills += kill_when(args + ["--out", out], ready, rng.uniform(0.0, 1.0))
    assert kills >= 1
    done = run(args + ["--out", out])
    assert done.returncode == 0, done.stderr
    got = json.loads((out / "result.json").read_text())
    assert got["target_error"] == expected["target_error"]
    assert got["per_fine_class_target_acc"] == expected["per_fine_class_target_acc"]
    assert got["levels"] == expected["levels"]

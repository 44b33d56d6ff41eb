"""Whole runs trained as a fused group (granularity.engine.fused_group): each run's folder,
result, checkpoints and resume are its own, and its numbers are those it gets alone (float32:
predictions equal, per-epoch training losses within rel 1e-4; see tests/engine/test_fused.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from granularity.engine.fused_group import run_group
from granularity.engine.run import run_transfer
from granularity.errors import RunFailedError

from .conftest import run_files, tiny_config


def _cfgs(**kw):
    """Three runs that differ in seed, label function (head size 4 or 2) and transfer lr."""
    return [tiny_config(seed=s, source=src, bf16=False, transfer={"epochs": 1, "batch_size": 16, "lr": lr}, **kw)
            for s, src, lr in ((0, "leaf", 0.02), (1, "target", 0.05), (2, "leaf", 0.01))]


def _same(a, b) -> None:
    """Two run folders' results agree as a run alone and fused may (float32)."""
    (ra, ma, pa), (rb, mb, pb) = run_files(a), run_files(b)
    assert np.mean(np.array(pa["pred"]) == np.array(pb["pred"])) >= 0.99
    assert abs(ra["target_acc"] - rb["target_acc"]) * ra["dataset"]["n_test"] <= 2
    assert [m["stage"] for m in ma] == [m["stage"] for m in mb]
    np.testing.assert_allclose([m["train_loss"] for m in ma], [m["train_loss"] for m in mb], rtol=1e-4)


def test_runs_fused_in_a_group_equal_the_runs_alone(tiny, tmp_path, monkeypatch):
    import granularity.engine.fused as fused_mod

    cfgs = _cfgs()
    for k, c in enumerate(cfgs):
        run_transfer(c, tmp_path / f"alone{k}", dataset=tiny)
    evaluated, real = [], fused_mod.predict_fused
    monkeypatch.setattr(fused_mod, "predict_fused", lambda fn, xs, *a, **kw: evaluated.append(len(xs)) or real(fn, xs, *a, **kw))
    out = run_group([lambda c=c, k=k: run_transfer(c, tmp_path / f"fused{k}", dataset=tiny) for k, c in enumerate(cfgs)])
    for k, (res, err, info) in enumerate(out):
        assert err is None and info == {"fused_with": 3, "reason": None}
        assert res["fused_with"] == 3 == json.loads((tmp_path / f"fused{k}" / "result.json").read_text())["fused_with"]
        _same(tmp_path / f"alone{k}", tmp_path / f"fused{k}")
    assert "fused_with" not in json.loads((tmp_path / "alone0" / "result.json").read_text())
    assert evaluated == [3] * 3  # every epoch's test evaluation ran fused too (2 pretraining + 1 transfer)
    for k in range(3):
        a, b = (json.loads((tmp_path / f"{w}{k}" / "result.json").read_text()) for w in ("alone", "fused"))
        assert a["levels"] == b["levels"] and a["pretrain_levels"] == b["pretrain_levels"]


def test_runs_without_a_common_fused_form_train_alone_with_the_reason(tiny, tmp_path):
    cfgs = [tiny_config(bf16=False), tiny_config(bf16=False, model={"name": "mlp", "options": {"hidden": 8}})]
    out = run_group([lambda c=c, k=k: run_transfer(c, tmp_path / f"r{k}", dataset=tiny) for k, c in enumerate(cfgs)])
    for res, err, info in out:
        assert err is None and info["fused_with"] == 1 and "differ" in info["reason"]
        assert res["fused_with"] == 1
    run_transfer(cfgs[1], tmp_path / "mlp_alone", dataset=tiny)
    _same(tmp_path / "r1", tmp_path / "mlp_alone")


def test_head_parts_keep_a_much_larger_head_apart():
    from granularity.engine.fused_group import HEAD_FREE, HEAD_RATIO, head_parts

    assert (HEAD_RATIO, HEAD_FREE) == (4, 256)
    # the default study's heads: 2 .. 80 classes fuse (all under 256), one head per training image does not
    assert head_parts([10, 2, 10000, 20, 80, None, 10]) == [[0, 1, 3, 4, 6], [2], [5]]
    assert head_parts([300, 1000, 1300, 5000]) == [[0, 1], [2, 3]]  # 1000 <= 4 x 300; 1300 > 4 x 300 starts a part
    assert head_parts([]) == [] and head_parts([7]) == [[0]]


def test_a_member_with_a_much_larger_head_trains_alone_with_the_reason(tiny, tmp_path, monkeypatch):
    import granularity.engine.fused as fused_mod
    import granularity.engine.fused_group as fg

    monkeypatch.setattr(fg, "HEAD_FREE", 1)
    monkeypatch.setattr(fg, "HEAD_RATIO", 1.5)  # so the leaf heads (4 classes) part from the target head (2)
    sizes, real = [], fused_mod.train_epoch_fused
    monkeypatch.setattr(fused_mod, "train_epoch_fused", lambda model, members, *a, **kw: sizes.append(len(members))
                        or real(model, members, *a, **kw))
    cfgs = _cfgs()
    out = run_group([lambda c=c, k=k: run_transfer(c, tmp_path / f"fused{k}", dataset=tiny) for k, c in enumerate(cfgs)])
    assert sizes == [2, 2, 3]  # 2 pretraining epochs of the leaf runs 0 and 2; the transfer's 2-way heads all 3
    assert [e for _, e, _ in out] == [None] * 3
    assert out[0][2]["reason"] is None and out[2][2]["reason"] is None
    assert out[1][2]["reason"].startswith("its head of 2 classes and the others' [4] differ more than 1.5x")
    for k, c in enumerate(cfgs):
        run_transfer(c, tmp_path / f"alone{k}", dataset=tiny)
        _same(tmp_path / f"alone{k}", tmp_path / f"fused{k}")


def test_an_interrupted_or_diverged_member_leaves_and_the_others_go_on(tiny, tmp_path):
    cfgs = _cfgs(checkpoint_every_steps=2)
    cfgs.append(tiny_config(seed=3, bf16=False, pretrain={"epochs": 2, "batch_size": 16, "lr": 1e9}))  # diverges
    stops = [None, 4, None, None]  # member 1 is "killed" after 4 steps (pretraining epoch 1, step 4)
    out = run_group([lambda c=c, k=k: run_transfer(c, tmp_path / f"fused{k}", dataset=tiny, stop_after_steps=stops[k])
                     for k, c in enumerate(cfgs)])
    assert isinstance(out[1][1], KeyboardInterrupt) and not (tmp_path / "fused1" / "result.json").exists()
    assert isinstance(out[3][1], RunFailedError) and "non-finite" in str(out[3][1])
    with pytest.raises(RunFailedError, match="non-finite"):  # the same failure as alone
        run_transfer(cfgs[3], tmp_path / "alone3", dataset=tiny)
    for k in (0, 2):
        assert out[k][1] is None
        run_transfer(cfgs[k], tmp_path / f"alone{k}", dataset=tiny)
        _same(tmp_path / f"alone{k}", tmp_path / f"fused{k}")
    run_transfer(cfgs[1], tmp_path / "fused1", dataset=tiny)  # resumed alone from its own step checkpoint
    run_transfer(cfgs[1], tmp_path / "alone1", dataset=tiny)
    _same(tmp_path / "alone1", tmp_path / "fused1")


_KILLED = """
import sys, torch
sys.path[:0] = [{engine!r}, {tests!r}]
torch.set_num_threads(1)
from conftest import tiny_dataset
from granularity.engine.fused_group import run_group
from granularity.engine.run import run_transfer
import json
cfgs = json.loads({cfgs!r})
tiny = tiny_dataset()
run_group([lambda c=c, k=k: run_transfer(c, {root!r} + f"/r{{k}}", dataset=tiny) for k, c in enumerate(cfgs)])
"""


def test_sigkill_of_a_fused_group_loses_no_finished_run_and_resumes_the_others(tiny, tmp_path):
    base = dict(checkpoint_every_steps=2, eval_every_epoch=False)
    cfgs = [tiny_config(seed=k, bf16=False, pretrain={"epochs": e, "batch_size": 16, "lr": 0.05}, **base)
            for k, e in enumerate((1, 3, 40))]
    tests = os.path.dirname(os.path.dirname(__file__))
    script = _KILLED.format(tests=tests, engine=os.path.join(tests, "engine"), cfgs=json.dumps(cfgs), root=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not (tmp_path / "r1" / "result.json").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert (tmp_path / "r0" / "result.json").exists() and (tmp_path / "r1" / "result.json").exists()
    assert not (tmp_path / "r2" / "result.json").exists() and (tmp_path / "r2" / "checkpoint.pt").exists()
    finished = [(tmp_path / f"r{k}" / "result.json").read_text() for k in (0, 1)]
    out = run_group([lambda c=c, k=k: run_transfer(c, tmp_path / f"r{k}", dataset=tiny) for k, c in enumerate(cfgs)])
    assert all(err is None for _, err, _ in out)
    assert [(tmp_path / f"r{k}" / "result.json").read_text() for k in (0, 1)] == finished  # returned, not redone
    run_transfer(cfgs[2], tmp_path / "alone2", dataset=tiny)
    _same(tmp_path / "alone2", tmp_path / "r2")


def test_an_error_of_the_fused_epoch_reaches_every_member(tiny, tmp_path, monkeypatch):
    import granularity.engine.fused as fused_mod

    def boom(*a, **kw):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(fused_mod, "train_epoch_fused", boom)
    out = run_group([lambda c=c, k=k: run_transfer(c, tmp_path / f"r{k}", dataset=tiny) for k, c in enumerate(_cfgs()[:2])])
    assert all(isinstance(e, RuntimeError) and "simulated" in str(e) for _, e, _ in out)

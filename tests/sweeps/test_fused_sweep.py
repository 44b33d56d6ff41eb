"""Fused batches in the local sweep executor (``granularity sweep --fuse``) and in ``advise``:
the same runs and run ids as one at a time, each run's figures within float rounding (float32:
error rates within 2 test images, the project's tolerance, tests/engine/test_fused.py), each
fused run's result.json records ``fused_with``; a worker killed inside a fused batch costs a crash
only to the runs it had claimed and not finished (those are tried again one by one), a run it had
finished stays recorded, and a rerun ends with every run ok."""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from granularity.sweeps.local import fuse_key, fused_batches, recorded_shapes
from granularity.sweeps.spec import expand, load_sweep
from granularity.sweeps.store import ResultsStore
from granularity.sweeps.worker import KILL_ENV
from granularity.utils.io import read_json

from sweep_helpers import TINY_BASE
from test_worker_deaths import finish, query, running_workers, summary, sweep_proc, wait_for  # tests/sweeps is on sys.path

N_TEST = 30


def _sweep(tmp_path, root, axes, seeds=2, **base):
    spec = {"kind": "transfer",
            "base": {"data_root": str(root), "train_size": None, "test_size": None, "device": "cpu", "bf16": False,
                     "model": {"options": {"width": 2}}, "pretrain": {"epochs": 2, "batch_size": 16},
                     "transfer": {"epochs": 1, "batch_size": 16}, **base},
            "axes": axes, "seeds": seeds}
    file = tmp_path / "fused.yaml"
    file.write_text(yaml.safe_dump(spec))
    return file


def _runs(store):
    """run id -> (index row, result.json)."""
    with ResultsStore(store, create=False) as st:
        return {r["run_id"]: (r, read_json(st.run_dir(r["run_id"]) / "result.json")) for r in st.rows()}


def test_a_fused_sweep_gives_the_runs_of_the_unfused_one(tmp_path, cli, make_fmnist):
    file = _sweep(tmp_path, make_fmnist(120, N_TEST), {"source": ["leaf", "random:10"]})
    common = ("--workers", 2, "--threads", 1, "--quiet")
    assert cli("sweep", file, "--out", tmp_path / "fused", "--fuse", "--fuse-memory", "4G", *common)[0] == 0
    assert cli("sweep", file, "--out", tmp_path / "alone", *common)[0] == 0
    fused, alone = _runs(tmp_path / "fused"), _runs(tmp_path / "alone")
    assert set(fused) == set(alone) == {r.run_id for r in load_sweep(file).runs} and len(fused) == 4
    for rid, (row, res) in fused.items():
        assert row["status"] == alone[rid][0]["status"] == "ok"
        assert res["fused_with"] >= 2 and "fused_with" not in alone[rid][1], rid
        rates = [k for k in row["metrics"] if k.endswith("error") or "levels." in k or k == "target_acc"]
        assert "target_error" in rates
        for k in rates:  # error rates on the test images: within 2 of them
            assert abs(row["metrics"][k] - alone[rid][0]["metrics"][k]) * N_TEST <= 2 + 1e-9, (rid, k)
    with ResultsStore(tmp_path / "fused", create=False) as st:  # the data's shape, known now without loading it
        assert recorded_shapes(st, {fuse_key(r) for r in load_sweep(file).runs}) == {fuse_key(load_sweep(file).runs[0]): (1, 28, 28)}


def test_a_batch_heartbeats_every_claim_and_answers_each_run(tmp_path, make_fmnist, monkeypatch):
    import granularity.sweeps.worker as worker

    sw = load_sweep(_sweep(tmp_path, make_fmnist(120, N_TEST), {"source": ["leaf", "random:10"]}, seeds=1))
    beats, real = [], ResultsStore.heartbeat
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.01)
    monkeypatch.setattr(ResultsStore, "heartbeat", lambda self, rid, owner=None: beats.append(rid) or real(self, rid, owner))
    store = tmp_path / "store"
    with ResultsStore(store) as st:
        st.register_sweep(sw)
    sent: list[dict] = []
    worker.execute_batch(store, sw.runs, None, sent.append)  # in this process: no worker, same code
    ids = [r.run_id for r in sw.runs]
    assert sorted(o["run_id"] for o in sent) == sorted(ids) and {o["status"] for o in sent} == {"ok"}
    counts = {i: beats.count(i) for i in ids}  # one heartbeat thread kept both claims alive, all along
    assert min(counts.values()) >= max(3, max(counts.values()) // 2) and set(beats) == set(ids), counts
    runs = _runs(store)
    assert all(runs[i][0]["status"] == "ok" and runs[i][1]["fused_with"] == 2 for i in ids)
    sent.clear()
    worker.execute_batch(store, sw.runs, None, sent.append)  # finished: answered at once, nothing run
    assert [(o["run_id"], o["status"]) for o in sent] == [(i, "done") for i in ids]


def test_batches_hold_runs_of_one_model_and_data_within_the_memory_budget(tmp_path):
    base = {"data_root": str(tmp_path), "device": "cpu", "pretrain": {"batch_size": 16}}
    runs = expand({"kind": "transfer", "base": base, "axes": {"model.options.width": [2, 4], "source": ["leaf", "target"]},
                   "seeds": 3}).runs
    mib = 2**20
    batches = fused_batches(runs, 1, 64 * 256 * mib)
    assert sorted(map(len, batches)) == [6, 6]  # one batch per model: seeds and label functions differ
    assert all(len({r.config["model"]["options"]["width"] for r in b}) == 1 for b in batches)
    assert sorted(map(len, fused_batches(runs, 2, 64 * 256 * mib))) == [3, 3, 3, 3]  # every worker busy
    assert sorted(map(len, fused_batches(runs, 1, 4 * 256 * mib))) == [3, 3, 3, 3]  # 4 runs of 256 MiB fit, as equal as can be
    shapes = {fuse_key(r): (1, 28, 28) for r in runs}  # a width-2/4 CNN at batch 16 needs far less than 256 MiB
    assert sorted(map(len, fused_batches(runs, 1, 4 * 256 * mib, shapes))) == [6, 6]
    sims = expand({"kind": "simulate", "base": TINY_BASE, "seeds": 2}).runs
    assert fuse_key(sims[0]) is None and [len(b) for b in fused_batches(sims, 1, 64 * 256 * mib)] == [1, 1]


@pytest.mark.slow
def test_a_run_that_kills_its_fused_batch_fails_alone_and_a_rerun_finishes(tmp_path, make_fmnist):
    file = _sweep(tmp_path, make_fmnist(120, N_TEST), {"source": ["leaf", "random:10"]})
    runs = load_sweep(file).runs
    killer = runs[1].run_id  # the second member of the one batch of 4: it kills the worker as it starts
    store = tmp_path / "store"
    args = ("--workers", 1, "--threads", 1, "--fuse", "--fuse-memory", "4G")
    proc = sweep_proc(file, store, *args, env={KILL_ENV: killer})
    out, err = finish(proc, 300)
    got = summary(store)
    assert (proc.returncode, got) == (1, {"counts": {"ok": 3, "failed": 1}, "failed_never_started": 0, "running": 0}), \
        err[-3000:]
    with ResultsStore(store, create=False) as st:
        rows = {r["run_id"]: r for r in st.rows()}
    # the batch's crash was everybody's once; tried again one by one, only the killer dies again
    assert rows[killer]["status"] == "failed" and rows[killer]["error"].startswith("WorkerCrashed")
    assert rows[killer]["attempts"] == 2 and f"failed {killer}" in out
    # the first member had started in the batch (then again alone); the last two had been claimed, never started
    assert [rows[r.run_id]["attempts"] for r in runs] == [2, 2, 1, 1]
    assert all(r["status"] == "ok" for rid, r in rows.items() if rid != killer)
    proc = sweep_proc(file, store, *args)  # the hook off: the rerun runs the failed run only
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode, summary(store)["counts"]) == (0, {"ok": 4}), err[-3000:]
    assert "1 ran, 3 skipped as finished" in out


@pytest.mark.slow
def test_a_worker_killed_mid_batch_keeps_the_finished_run_and_resumes_the_other(tmp_path, make_fmnist):
    # a 1-epoch and a 40-epoch run share a batch; the worker is killed once the short one is recorded
    file = _sweep(tmp_path, make_fmnist(240, N_TEST), {"pretrain.epochs": [1, 40]}, seeds=1)
    short, long_ = (r.run_id for r in load_sweep(file).runs)
    store = tmp_path / "store"
    proc = sweep_proc(file, store, "--workers", 1, "--threads", 1, "--fuse", "--fuse-memory", "4G")
    try:
        wait_for(lambda: query(store, f"SELECT 1 FROM runs WHERE run_id='{short}' AND status='ok'"), 240, "the short run", proc)
        pid = wait_for(lambda: running_workers(store, proc.pid).get(long_), 60, "the long run running", proc)
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert (proc.returncode, summary(store)) == (0, {"counts": {"ok": 2}, "failed_never_started": 0, "running": 0}), err[-3000:]
    runs = _runs(store)
    assert runs[short][0]["attempts"] == 1 and runs[short][1]["fused_with"] == 2  # recorded by the batch, not rerun
    assert runs[long_][0]["attempts"] == 2  # its crash, then alone


def _advise(root, out, *extra):
    return ["advise", "--data-root", root, "--train-size", 160, "--target", 2, "--epochs", 1, "--transfer-epochs", 1,
            "--set", "run.test_size=60", "--set", "run.device=cpu", "--set", "run.bf16=false",
            "--set", "run.model.options.width=4", "--set", "run.pretrain.batch_size=32", "--set", "run.transfer.batch_size=32",
            "--candidates", "target,level:3", "--min-seeds", 2, "--max-seeds", 2, "--confirm-seeds", 2,
            "--max-runs", 10, "--workers", 2, "--threads", 1, "--out", out, *extra]


@pytest.mark.slow
def test_advise_fused_gives_the_decision_and_runs_of_advise_unfused(tmp_path, cli, make_fmnist):
    root = make_fmnist(240, 60)
    code, _, err = cli(*_advise(root, tmp_path / "fused", "--fuse"))
    assert code == 0, err
    code, _, err = cli(*_advise(root, tmp_path / "alone", "--no-fuse"))
    assert code == 0, err
    a, b = read_json(tmp_path / "fused" / "advice.json"), read_json(tmp_path / "alone" / "advice.json")
    assert a["finished"] and a["runs"] == b["runs"] >= 4
    assert a["decision"]["recommendation"] == b["decision"]["recommendation"]
    assert a["decision"]["selected_on_validation"] == b["decision"]["selected_on_validation"]
    fused, alone = _runs(tmp_path / "fused" / "store"), _runs(tmp_path / "alone" / "store")
    assert set(fused) == set(alone)
    assert all(res["fused_with"] >= 2 for _, res in fused.values()) and not any("fused_with" in r for _, r in alone.values())
    for rid, (_, res) in fused.items():
        assert abs(res["target_error"] - alone[rid][1]["target_error"]) * 60 <= 2 + 1e-9, rid
    from granularity.experiments.advise import _read_results
    from granularity.sweeps.spec import RunSpec

    with ResultsStore(tmp_path / "fused" / "store", create=False) as st:  # the time budget counts a run's share
        grid = {(r["config"]["source"], r["params"]["seed"]): RunSpec(r["run_id"], "transfer", r["config"], r["params"])
                for r in st.rows()}
        got = _read_results(st, grid)
    for key, v in got.items():
        res = fused[grid[key].run_id][1]
        assert v["seconds"] == pytest.approx(max(res["seconds"], res.get("train_seconds") or 0) / res["fused_with"])


@pytest.mark.parametrize("command", ["sweep", "advise"])
def test_a_bad_fuse_memory_is_one_line(tmp_path, cli, command):
    file = _sweep(tmp_path, tmp_path, {"source": ["leaf"]}, seeds=1)
    args = [file] if command == "sweep" else []
    code, _, err = cli(command, *args, "--fuse", "--fuse-memory", "nonsense", "--out", tmp_path / "o")
    assert code == 2 and "--fuse-memory" in err and "'nonsense'" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_fuse_with_another_executor_is_one_line(tmp_path, cli):
    file = _sweep(tmp_path, tmp_path, {"source": ["leaf"]}, seeds=1)
    code, _, err = cli("sweep", file, "--executor", "ray", "--fuse", "--out", tmp_path / "o")
    assert code == 2 and "'--fuse' option is for --executor local" in err and len(err.strip().splitlines()) == 1, err

"""Tracking: the scalars of metrics.jsonl, the config as params and config/result as artifacts,
read back from TensorBoard event files (EventAccumulator) and an MLflow file store
(MlflowClient); a sweep logs one tracked run per sweep run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from granularity.errors import GranularityError
from granularity.tracking import parse_backends, record_scalars

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweeps"))
from sweep_helpers import TINY_BASE, write_sweep  # noqa: E402


def test_record_scalars():
    step, s = record_scalars({"stage": "pretrain", "epoch": 3, "loss": 0.5, "acc": 1, "ok": True, "nan": float("nan"),
                              "levels": {"fine": 0.25}})
    assert step == 3 and s == {"pretrain/loss": 0.5, "pretrain/acc": 1.0, "pretrain/levels.fine": 0.25}
    step, s = record_scalars({"seed": 4, "source": "fine", "step": 10, "loss": 2.0}, group_seed=True)
    assert step == 10 and s == {"seed_4/fine/loss": 2.0}


def test_backends_are_checked():
    assert parse_backends("mlflow, tensorboard,mlflow") == ["mlflow", "tensorboard"]
    with pytest.raises(GranularityError, match="'--track' option must list backends among tensorboard, mlflow. Got 'wandb'"):
        parse_backends("tensorboard,wandb")


def _expected(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Independent of the tracker's code: the curves straight from metrics.jsonl."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for key, value in rec.items():
            if key not in ("seed", "source", "step") and isinstance(value, float):
                out.setdefault(f"{rec['source']}/{key}", []).append((rec["step"], value))
    return out


@pytest.mark.slow
def test_sweep_tracks_every_run_in_tensorboard_and_mlflow(tmp_path, cli, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the reading client; the tracker sets it too
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base = {**TINY_BASE, "model": {"m": 4, "train_second_layer": True}}
    file = write_sweep(tmp_path / "tr.yaml", axes={}, zip=[{"train.lr": [0.5, 1e6]}], seeds=1, base=base, name="trk")
    store, track = tmp_path / "store", tmp_path / "track"
    code, out, err = cli("sweep", file, "--out", store, "--workers", "1", "--track", "tensorboard,mlflow",
                         "--track-dir", track, "--quiet")
    assert code == 1 and "(1 failed, 1 ok)" in out, err  # the lr=1e6 run diverges: tracked as failed
    run_dirs = {p.name: p for p in (store / "runs").iterdir()}
    ok_id = next(r for r, p in run_dirs.items() if (p / "result.json").exists())
    bad_id = next(r for r in run_dirs if r != ok_id)
    expected = _expected(run_dirs[ok_id])
    assert len(expected) >= 3 and all(len(v) >= 3 for v in expected.values())

    acc = EventAccumulator(str(track / "tensorboard" / "trk" / ok_id))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points]
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6)  # float32 in event files
    assert "artifacts/result.json" in acc.Tags()["tensors"] or "artifacts/result.json/text_summary" in acc.Tags()["tensors"]

    client = MlflowClient(tracking_uri=(track / "mlflow").resolve().as_uri())
    exp = client.get_experiment_by_name("trk")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {ok_id, bad_id}
    ok, bad = runs[ok_id], runs[bad_id]
    assert (ok.info.status, bad.info.status) == ("FINISHED", "FAILED")
    assert "non-finite" in bad.data.tags["granularity.error"]
    cfg = json.loads((run_dirs[ok_id] / "config.json").read_text())
    assert ok.data.params["train.lr"] == "0.5" and ok.data.params["data.k"] == json.dumps(cfg["data"]["k"])
    for tag, points in expected.items():
        hist = client.get_metric_history(ok.info.run_id, tag)
        assert sorted((m.step, m.value) for m in hist) == sorted(points)  # float64: exact
    arts = {a.path for a in client.list_artifacts(ok.info.run_id)}
    assert {"config.json", "result.json"} <= arts
    assert "error.txt" in {a.path for a in client.list_artifacts(bad.info.run_id)}
    local = client.download_artifacts(ok.info.run_id, "result.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == json.loads((run_dirs[ok_id] / "result.json").read_text())


@pytest.mark.slow
def test_transfer_tracks_live_the_same_scalars_as_metrics_jsonl(tmp_path, cli, make_fmnist, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from granularity.tracking import record_scalars
    from granularity.utils.io import read_jsonl

    out, track = tmp_path / "run1", tmp_path / "trk"
    code, stdout, err = cli("transfer", "--data-root", make_fmnist(120, 60), "--train-size", 100, "--epochs", 2,
                            "--transfer-epochs", 1, "--device", "cpu", "--set", "model.options.width=4",
                            "--out", out, "--track", "tensorboard,mlflow", "--track-dir", track)
    assert code == 0, err
    expected: dict[str, list] = {}
    for rec in read_jsonl(out / "metrics.jsonl"):  # what the engine logged, recomputed from the file
        step, scalars = record_scalars(rec)
        for k, v in scalars.items():
            expected.setdefault(k, []).append((step, v))
    assert expected
    acc = EventAccumulator(str(track / "tensorboard" / "granularity" / "run1"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points]
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6)
    client = MlflowClient(tracking_uri=(track / "mlflow").as_uri())
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.params["source"] == "leaf"
    assert code == 0 and cli("transfer", "--data-root", make_fmnist(120, 60), "--out", tmp_path / "r2",
                             "--track", "wandb")[0] == 2  # unknown backend: one line, exit 2

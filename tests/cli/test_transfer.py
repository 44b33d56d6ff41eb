"""``granularity transfer`` and ``granularity study`` on tiny Fashion-MNIST-format files."""

from __future__ import annotations

import json

import pytest

from granularity.cli.main import main


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture
def fmnist_root(make_fmnist):
    return make_fmnist(200, 100)


def _one_line_error(capsys, code):
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("granularity: error:")
    return err


def test_transfer_command(fmnist_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["transfer", "--data-root", str(fmnist_root), "--source", "leaf", "--target", "1", "--epochs", "1",
            "--set", "train_size=null", "--set", "model.options.width=4", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    assert "leaf -> level 1 (finetune): target error" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pretrain"]["epochs"] == 1 and cfg["model"]["options"] == {"width": 4}
    assert json.loads((out / "result.json").read_text())["hierarchy_hash"]


def test_study_quick(fmnist_root, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["study", "--dataset", "fashion-mnist", "--quick", "--data-root", str(fmnist_root), "--device", "cpu", "--quiet",
            "--set", "run.train_size=100", "--set", "run.test_size=50", "--set", "kmeans_sizes=[4]",
            "--set", "per_sample=false", "--set", "rare_sources=[target]", "--set", "run.model.options.width=4",
            "--set", "run.target=1", "--seeds", "2", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "kmeans-within:4" in text and "rare/target" in text and "hard samples" in text
    assert (out / "results.csv").exists() and (out / "error_vs_classes.png").exists()


@pytest.mark.parametrize(
    "args,match",
    [
        (["transfer", "--source", "kmeans-withn:4"], "did you mean 'kmeans-within'"),
        (["transfer", "--set", "pretrain.epoch=2"], "Unknown config key 'pretrain.epoch'"),
        (["transfer", "--model", "resnet19"], "Unknown model 'resnet19'"),
        (["transfer", "--target", "7", "--data-root", "FMROOT", "--train-size", "100", "--out", "OUT"], "'target' parameter must be a hierarchy level"),
        (["study", "--seeds", "0,x"], "--seeds"),
        (["study", "--quick", "--full"], "cannot be used together"),
        (["study", "--dataset", "cifar1000"], "Unknown data set 'cifar1000'"),
        (["transfer", "--config", "missing.yaml"], "does not exist"),
        # the spellings before the one vocabulary are gone: unknown options and keys, one line
        (["study", "fashion-mnist"], "unexpected extra argument (fashion-mnist)"),
        (["study", "--mode", "linear"], "No such option '--mode'"),
        (["transfer", "--mode", "linear"], "No such option '--mode'"),
        (["study", "--protocol", "linear"], "'linear' is not one of 'map', 'probe', 'finetune'"),
        (["study", "--set", "dataset=fashion-mnist"], "Unknown config key 'dataset'"),
        (["study", "--set", "target_level=1"], "Unknown config key 'target_level'"),
        (["study", "--set", "run.transfer.mode=linear"], "Unknown config key 'run.transfer.mode'"),
        (["study", "--design", "bridge", "--set", "modes=[linear]"], "Unknown config key 'modes'"),
        (["study", "--design", "bridge", "--set", "primary.mode=linear"], "Unknown config key 'primary.mode'"),
        (["study", "--design", "brige"], "'brige' is not one of 'levels', 'bridge', 'bridge-phase', 'groupings', 'fewshot', 'wordnet-glosses'"),
    ],
)
def test_cli_errors(args, match, capsys, fmnist_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folders land in the temporary folder
    args = [str(fmnist_root) if a == "FMROOT" else str(tmp_path / "o") if a == "OUT" else a for a in args]
    err = _one_line_error(capsys, main(args))
    assert match in err


def test_failed_start_does_not_block_a_corrected_rerun(fmnist_root, tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["transfer", "--data-root", str(fmnist_root), "--train-size", "100", "--epochs", "0",
            "--transfer-epochs", "0", "--device", "cpu", "--out", out]
    _one_line_error(capsys, main([*base, "--target", "7"]))
    assert main([*base, "--target", "1"]) == 0
    assert main([*base, "--target", "2"]) == 2  # a finished run of another config is protected
    assert "holds a run with another config" in capsys.readouterr().err

"""One vocabulary: every removed old spelling (--mode, linear, transfer.mode, transfer.target_level,
`study DATASET`) is one `granularity: error:` line naming what is wrong, exit 2, no traceback;
`granularity results PATH --migrate` rewrites folders written in the old spelling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def fm(make_fmnist):
    return str(make_fmnist(60, 30))


def dry(cli, *args):
    """(config printed by --dry-run, stderr lines) of a command that must succeed."""
    code, out, err = cli(*args, "--dry-run")
    assert code == 0, err
    text = out[: out.rindex("}") + 1]  # the JSON config, before the plan lines
    return json.loads(text), err.strip().splitlines()


def one_error(cli, *args, says: str) -> None:
    code, out, err = cli(*args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("granularity: error:"), (code, err)
    assert says in lines[0] and "Traceback" not in out, lines[0]


TRANSFER = ("transfer", "--device", "cpu", "--set", "train_size=null")
STUDY = ("study", "--quick", "--device", "cpu", "--set", "run.train_size=null", "--set", "run.test_size=null")


@pytest.mark.parametrize("old,says", [
    (["--mode", "linear"], "No such option '--mode'"),
    (["--protocol", "linear"], "'linear' is not one of"),
    (["--set", "transfer.mode=linear"], "Unknown config key 'transfer.mode'"),
    (["--set", "transfer.protocol=linear"], "Invalid value for 'transfer.protocol'"),
])
def test_transfer_old_spellings_are_one_error(cli, fm, old, says):
    one_error(cli, *TRANSFER, "--data-root", fm, *old, "--dry-run", says=says)


def test_transfer_old_config_file_is_one_error(cli, fm, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("transfer:\n  mode: linear\n  epochs: 2\n")
    one_error(cli, *TRANSFER, "--data-root", fm, "--config", path, "--dry-run", says="Unknown config key 'transfer.mode'")


@pytest.mark.parametrize("old,says", [
    (["fashion-mnist"], "unexpected extra argument (fashion-mnist)"),
    (["--mode", "linear"], "No such option '--mode'"),
    (["--set", "pretrain.epochs=2"], "Unknown config key 'pretrain'"),
])
def test_study_old_spellings_are_one_error(cli, fm, old, says):
    one_error(cli, *STUDY, "--data-root", fm, *old, "--dry-run", says=says)


def test_study_help_has_no_positional_dataset(cli):
    code, out, err = cli("study", "--help")
    assert code == 0 and out.splitlines()[0] == "Usage: granularity study [OPTIONS]"
    assert "dataset_arg" not in out.lower() and "--dataset" in out


def test_advise_simulate_phase_old_spellings_are_one_error(cli, tmp_path):
    one_error(cli, "advise", "--mode", "linear", "--dry-run", says="No such option '--mode'")
    one_error(cli, "simulate", "--preset", "quick", "--set", "transfer.target_level=2", "--dry-run",
              says="Unknown config key 'transfer.target_level'")
    one_error(cli, "phase", "--preset", "quick", "--x", "transfer.target_level=1,2", "--y", "data.k=2,4",
              "--out", tmp_path / "p", says="Unknown config key 'transfer.target_level'")


def test_sweep_and_results_old_spellings_are_one_error(cli, tmp_path):
    from granularity.sweeps.spec import expand
    from granularity.sweeps.store import ResultsStore

    path = tmp_path / "s.yaml"
    path.write_text("kind: transfer\naxes:\n  transfer.mode: [finetune, linear]\nseeds: 1\n")
    one_error(cli, "sweep", path, "--dry-run", says="Unknown config key 'transfer.mode'")
    with ResultsStore(tmp_path / "store") as store:
        store.register_sweep(expand({"kind": "transfer", "axes": {"transfer.protocol": ["probe"]}, "seeds": 1}))
    one_error(cli, "results", tmp_path / "store", "--filter", "transfer.mode=linear",
              says="The '--filter' key 'transfer.mode'")
    code, out, err = cli("results", tmp_path / "store", "--filter", "transfer.protocol=probe")
    assert code == 0 and "probe" in out, err


def test_results_migrate_rewrites_an_old_folder(cli, tmp_path):
    """The committed simulate folder, as the release before the renames wrote it, migrated by the
    command: its files are the committed ones again."""
    src = ROOT / "docs/results/simulate-paper"
    folder = shutil.copytree(src, tmp_path / "paper")
    config = json.loads((folder / "config.json").read_text())
    config["transfer"]["target_level"] = config["transfer"].pop("target")
    (folder / "config.json").write_text(json.dumps(config))
    code, out, err = cli("results", folder, "--migrate")
    assert code == 0 and out.strip() == str(folder / "config.json"), (out, err)
    assert (folder / "config.json").read_bytes() == (src / "config.json").read_bytes()
    code, out, err = cli("results", folder, "--migrate")
    assert code == 0 and out == "" and "0 files" in err


def test_study_seed_and_seeds(cli, fm):
    one, _ = dry(cli, *STUDY, "--data-root", fm, "--seed", "4")
    listed, _ = dry(cli, *STUDY, "--data-root", fm, "--seeds", "4")
    assert one["seeds"] == [4] and listed["seeds"] == [0, 1, 2, 3]
    code, _, err = cli(*STUDY, "--data-root", fm, "--seed", "1", "--seeds", "2", "--dry-run")
    assert code == 2 and "cannot be used together" in err


def test_simulate_seed_and_seeds(cli):
    def sim(*a):
        code, out, err = cli("simulate", "--preset", "quick", "--dry-run", *a)
        return code, (json.loads(out[: out.rindex("}") + 1]) if code == 0 else err)

    assert sim("--seeds", "3")[1]["seeds"] == 3 and sim("--seeds", "3")[1]["seed0"] == 0
    cfg = sim("--seeds", "5,6,7")[1]
    assert (cfg["seed0"], cfg["seeds"]) == (5, 3)
    cfg = sim("--seed", "9")[1]
    assert (cfg["seed0"], cfg["seeds"]) == (9, 1)
    code, err = sim("--seeds", "1,5")
    assert code == 2 and "consecutive" in err and err.count("\n") == 1

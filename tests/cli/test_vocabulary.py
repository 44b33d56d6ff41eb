"""One vocabulary (granularity.vocabulary): every old spelling gives the new behaviour and
exactly one deprecation line on stderr, exit 0; old and new spellings give one config and one
run id; files written in the old spelling are read (resumed, reported) as before."""

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


def one_warning(lines, old, new):
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("granularity: warning:") and old in line and new in line, line


TRANSFER = ("transfer", "--device", "cpu", "--set", "train_size=null")


@pytest.mark.parametrize("old,new,shown", [
    (["--mode", "linear"], ["--protocol", "probe"], ("'--mode linear'", "'--protocol probe'")),
    (["--mode", "map"], ["--protocol", "map"], ("'--mode'", "'--protocol'")),
    (["--set", "transfer.mode=linear"], ["--set", "transfer.protocol=probe"], ("'transfer.mode=linear'", "'transfer.protocol=probe'")),
    (["--set", "transfer.protocol=linear"], ["--set", "transfer.protocol=probe"], ("'transfer.protocol=linear'", "'transfer.protocol=probe'")),
])
def test_transfer_old_spellings(cli, fm, old, new, shown):
    new_cfg, new_err = dry(cli, *TRANSFER, "--data-root", fm, *new)
    old_cfg, old_err = dry(cli, *TRANSFER, "--data-root", fm, *old)
    assert new_err == [] and old_cfg == new_cfg
    one_warning(old_err, *shown)


def test_transfer_old_config_file_and_new_flag(cli, fm, tmp_path):
    """A file in the old spelling is read in the new one, so a new flag still overrides it."""
    path = tmp_path / "c.yaml"
    path.write_text("transfer:\n  mode: linear\n  epochs: 2\n")
    cfg, err = dry(cli, *TRANSFER, "--data-root", fm, "--config", path)
    assert cfg["transfer"]["protocol"] == "probe" and cfg["transfer"]["epochs"] == 2 and "mode" not in cfg["transfer"]
    one_warning(err, "'transfer.mode=linear'", "'transfer.protocol=probe'")
    cfg, _ = dry(cli, *TRANSFER, "--data-root", fm, "--config", path, "--protocol", "map")
    assert cfg["transfer"]["protocol"] == "map"


def test_both_spellings_at_once_is_an_error(cli, fm):
    code, _, err = cli(*TRANSFER, "--data-root", fm, "--mode", "linear", "--protocol", "probe", "--dry-run")
    assert code == 2 and err.strip().count("\n") == 0 and "--mode is the old spelling of --protocol" in err


STUDY = ("study", "--quick", "--device", "cpu", "--set", "run.train_size=null", "--set", "run.test_size=null")


def test_study_positional_dataset(cli, fm):
    new_cfg, new_err = dry(cli, *STUDY, "--data-root", fm, "--dataset", "fashion-mnist")
    old_cfg, old_err = dry(cli, "study", "fashion-mnist", *STUDY[1:], "--data-root", fm)
    assert new_err == [] and old_cfg == new_cfg
    one_warning(old_err, "'granularity study fashion-mnist'", "'granularity study --dataset fashion-mnist'")


def test_study_help_hides_the_positional_dataset(cli):
    """The old positional is accepted (test above) but no longer advertised: not in the usage line
    nor in the help (before: 'Usage: granularity study [OPTIONS] [DATASET]')."""
    code, out, err = cli("study", "--help")
    usage = out.splitlines()[0]
    assert code == 0 and usage == "Usage: granularity study [OPTIONS]", usage
    assert "DATASET" not in out.replace("--dataset", "") and "dataset_arg" not in out.lower()
    assert "--dataset" in out


@pytest.mark.parametrize("old,new,shown", [
    (["--set", "pretrain.epochs=2"], ["--set", "run.pretrain.epochs=2"], ("'pretrain.epochs'", "'run.pretrain.epochs'")),
    (["--set", "data_seed=3"], ["--set", "run.data_seed=3"], ("'data_seed'", "'run.data_seed'")),
    (["--mode", "linear"], ["--protocol", "probe"], ("'--mode linear'", "'--protocol probe'")),
])
def test_study_old_spellings(cli, fm, old, new, shown):
    new_cfg, new_err = dry(cli, *STUDY, "--data-root", fm, *new)
    old_cfg, old_err = dry(cli, *STUDY, "--data-root", fm, *old)
    assert new_err == [] and old_cfg == new_cfg
    one_warning(old_err, *shown)


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


def test_old_study_json_resumes_and_reports(tmp_path):
    """A study folder whose study.json is in the flat spelling of before the study held a
    transfer config (the committed study folder, rewritten that way: it is now in the new
    spelling) is the same study as its new spelling, and `granularity report` reads it."""
    from granularity.experiments.study import StudyConfig, _same_study, read_study_config
    from granularity.report.build import build_report

    src = ROOT / "docs/results/study-fashion-mnist"
    new = json.loads((src / "study.json").read_text())
    if "run" in new:  # flatten: the run settings at the top, as the release before wrote them
        from granularity.experiments.study import RUN_KEYS  # the run keys the flat spelling had

        run = {k: v for k, v in new["run"].items() if k in RUN_KEYS}
        old = {k: v for k, v in new.items() if k != "run"} | run
    else:
        old = new
    assert "dataset" in old and "run" not in old
    cfg = read_study_config(old)
    assert cfg.run.dataset == old["dataset"] and cfg.run.target == old["target"]
    assert _same_study(old, cfg) and not _same_study(old, cfg.model_copy(update={"seeds": [7]}))
    assert _same_study(cfg.to_dict(), StudyConfig.build(cfg.to_dict()))
    folder = tmp_path / "study-fashion-mnist"
    shutil.copytree(src, folder)
    (folder / "study.json").write_text(json.dumps(old))
    page = build_report([folder], tmp_path / "report")
    html = Path(page).read_text() if Path(page).is_file() else (Path(page) / "index.html").read_text()
    assert f"target level {old['target']}" in html and old["dataset"] in html

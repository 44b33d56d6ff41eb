"""``granularity simulate`` / ``phase`` from the command line."""

import json

import pytest


def test_default_preset_runs_and_writes_files(cli, tmp_path):
    # the default preset (`paper`) at reduced length so that CI stays fast
    code, out, err = cli("simulate", "--out", tmp_path, "--seeds", "2", "--quiet",
                         "--set", "train.steps=60", "--set", "transfer.n_test=200",
                         "--set", "transfer.finetune_steps=20", "--set", "transfer.probe_steps=20")
    assert code == 0, err
    assert "hard error" in out and "finetune" in out
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["name"] == "paper" and cfg["data"]["d"] == 256 and cfg["train"]["steps"] == 60
    for name in ("result.json", "metrics.jsonl", "env.json", "figures/errors.png", "figures/alignment.png"):
        assert (tmp_path / name).exists()


def test_help_lists_presets(cli):
    code, out, _ = cli("simulate", "--help")
    assert code == 0 and "quick" in out and "paper" in out and "deep" in out


@pytest.mark.parametrize(
    "args, match",
    [
        (["--preset", "papr"], "Unknown preset 'papr' (did you mean 'paper'?)"),
        (["--set", "data.kk=3"], "Unknown config key 'data.kk'"),
        (["--set", "data.k=abc"], "data.k"),
        (["--set", "train.lr=-1"], "train.lr"),
        (["--set", "data.d=8"], "do not fit"),
        (["--set", "nokey"], "key=value"),
        (["--seeds", "0"], "for seed 0 alone use '--seed 0' or '--seeds 0,'"),
        (["--seeds", "two"], "--seeds"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
        (["--bogus"], "No such option"),
        (["--set", "device=tpu"], "device"),
    ],
)
def test_bad_arguments_one_line_exit_2(cli, tmp_path, args, match):
    code, out, err = cli("simulate", "--out", tmp_path / "x", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert match in err
    assert "Traceback" not in err
    assert not (tmp_path / "x" / "result.json").exists()


def test_bad_config_file(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    code, _, err = cli("simulate", "--config", bad, "--out", tmp_path / "o")
    assert code == 2 and "not valid YAML" in err and len(err.strip().splitlines()) == 1
    bad.write_text("- 1\n- 2\n")
    code, _, err = cli("simulate", "--config", bad, "--out", tmp_path / "o")
    assert code == 2 and "mapping" in err


def test_unknown_command_suggests(cli):
    code, _, err = cli("simulat")
    assert code == 2 and "did you mean 'simulate'" in err


def test_phase_cli_and_plot_only(cli, tmp_path):
    args = ["phase", "--preset", "quick", "--seeds", "1", "--quiet", "--out", tmp_path,
            "--x", "data.k=2,3", "--y", "data.gamma=0.05",
            "--set", "train.steps=30", "--set", "transfer.protocols=[map]", "--set", "transfer.n_test=100"]
    code, out, err = cli(*args)
    assert code == 0, err
    assert "coarse" in out and (tmp_path / "phase.png").exists()
    code, out, err = cli("phase", "--plot-only", "--out", tmp_path)
    assert code == 0 and "fine" in out
    code, _, err = cli("phase", "--plot-only", "--out", tmp_path / "none")
    assert code == 2 and "not a phase-diagram folder" in err


def test_phase_axis_value_null_is_parsed_once(cli, tmp_path):
    """``--x data.sigma=null,0.1``: null is None (the model's default noise), not the text 'None'
    (before: the value was written back as 'None' and parsed again, a config error)."""
    from granularity.sweeps.phase import cell_configs, parse_axis
    from granularity.theory.presets import get_preset

    x = parse_axis("data.sigma=null,0.1")
    assert x == ("data.sigma", [None, 0.1])
    cells = cell_configs({**get_preset("quick").overrides, "name": "quick"}, x, ("data.k", [2]))
    assert [(name, c.data.sigma) for name, _, _, c in cells] == [("sigma=None__k=2", None), ("sigma=0.1__k=2", 0.1)]
    args = ["phase", "--preset", "quick", "--seeds", "1", "--quiet", "--out", tmp_path,
            "--x", "data.sigma=null,0.1", "--y", "data.k=2"]
    for s in ("data.d=16", "data.P=4", "model.m=3", "train.n_train=30", "train.steps=4", "train.batch_size=16",
              "train.log_points=2", "transfer.n_test=20", "transfer.probe_steps=3", "transfer.finetune_steps=3"):
        args += ["--set", s]
    code, out, err = cli(*args)
    assert code == 0, err
    phase = __import__("json").loads((tmp_path / "phase.json").read_text())
    assert phase["x_values"] == [None, 0.1]
    assert all(v == v for grid in phase["grids"].values() for v in grid[0])  # both cells finished
    assert (tmp_path / "cells" / "sigma=None__k=2" / "result.json").exists()


def test_phase_same_key_on_both_axes_is_an_error(cli, tmp_path):
    code, _, err = cli("phase", "--preset", "quick", "--out", tmp_path, "--x", "data.k=2,3", "--y", "data.k=4")
    assert code == 2 and "'data.k' appears on two axes of the phase diagram" in err


def test_diverged_run_is_a_run_failure_exit_1(cli, tmp_path):
    """A run whose loss goes non-finite failed at run time (not bad input): exit 1 like
    ``transfer``, one error line, ``failed.json`` with the reason, no ``result.json``."""
    cfg = {"name": "tiny", "data": {"d": 32, "P": 6, "k": 3}, "model": {"m": 4, "train_second_layer": True},
           "train": {"n_train": 120, "steps": 40, "batch_size": 32, "log_points": 5, "lr": 1e6},
           "transfer": {"n_test": 100, "probe_steps": 20, "finetune_steps": 20}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    code, out, err = cli("simulate", "--config", tmp_path / "c.json", "--seeds", "1", "--out", tmp_path / "r", "--quiet")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("granularity: error: run stopped for seeds 0-0: non-finite training loss")
    rec = json.loads((tmp_path / "r" / "failed.json").read_text())
    assert rec["seeds"] == [0] and "non-finite training loss" in rec["error"]
    assert (tmp_path / "r" / "config.json").exists() and not (tmp_path / "r" / "result.json").exists()

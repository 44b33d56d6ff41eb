"""`granularity sweep` / `granularity results`: bad input is one line on stderr with exit code 2;
listing, filtering and export of a store (written here through the store API, no training)."""

import pandas as pd
import pytest

from granularity.sweeps.spec import load_sweep
from granularity.sweeps.store import ResultsStore

from sweep_helpers import write_sweep


@pytest.fixture
def store(tmp_path):
    """A store whose runs are recorded by hand: k in {2, 3} x 2 seeds, one failed."""
    file = write_sweep(tmp_path / "grid.yaml", axes={"data.k": [2, 3]}, seeds=2)
    sweep = load_sweep(file)
    root = tmp_path / "store"
    with ResultsStore(root) as st:
        st.register_sweep(sweep)
        for i, run in enumerate(sweep.runs):
            st.claim(run)
            if i == 3:
                st.finish(run.run_id, "failed", error="FloatingPointError: non-finite training loss", wall_time=0.5)
            else:
                st.finish(run.run_id, "ok", metrics={"fine.map.hard": 0.1 * i, "coarse.map.hard": 0.5}, wall_time=1.0,
                          versions={"torch": "2.x", "granularity": "0.1.0"})
    return file, root, sweep


def one_line_error(code, err, *words):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("granularity: error: "), err
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("content, words", [
    ("axes: {data.kk: [2]}\n", ["data.kk", "Unknown config key"]),
    ("axes: {data.k: {geom: [0, 4, 3]}}\n", ["axes.data.k", "geom"]),
    ("seeds: -1\n", ["'seeds'", "-1"]),
    ("kind: simulator\n", ["simulator", "did you mean 'simulate'"]),
    ("axes: [1, 2]\n", ["'axes'"]),
    ("axes: {train.lr: [0.1, -1]}\n", ["train.lr=-1", "train.lr"]),
])
def test_bad_sweep_files(tmp_path, cli, content, words):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    code, _, err = cli("sweep", path, "--out", tmp_path / "store")
    one_line_error(code, err, *words)
    assert not (tmp_path / "store").exists()  # validated before anything starts


def test_bad_sweep_options(tmp_path, cli, store):
    file, root, _ = store
    one_line_error(*cli("sweep", tmp_path / "missing.yaml")[::2], "missing.yaml")
    one_line_error(*cli("sweep", file, "--workers", "0")[::2], "--workers")
    one_line_error(*cli("sweep", file, "--executor", "slurm")[::2], "slurm")
    one_line_error(*cli("sweep", file, "--address", "10.0.0.1:6379")[::2], "--address", "--executor ray")
    (tmp_path / "file").write_text("x")
    one_line_error(*cli("sweep", file, "--out", tmp_path / "file" / "store")[::2], "not writable")


def test_dry_run_lists_runs_with_status(cli, store):
    file, root, sweep = store
    code, out, err = cli("sweep", file, "--out", root, "--dry-run")
    assert code == 0
    lines = out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == [r.run_id for r in sweep.runs]
    assert [ln.split()[1] for ln in lines] == ["ok", "ok", "ok", "failed"]


def test_results_list_filter_export(tmp_path, cli, store):
    _, root, sweep = store
    code, out, err = cli("results", root)
    assert code == 0 and all(r.run_id in out for r in sweep.runs) and "fine.map.hard" in out
    code, out, _ = cli("results", root, "--filter", "data.k=3", "--filter", "status=ok")
    assert code == 0 and sweep.runs[2].run_id in out and sweep.runs[3].run_id not in out
    code, out, _ = cli("results", root, "--filter", "fine.map.hard>0.05", "--columns", "run_id,fine.map.hard")
    assert code == 0 and sweep.runs[0].run_id not in out and sweep.runs[1].run_id in out
    code, out, _ = cli("results", root, "--filter", "error!=null", "--columns", "run_id,error")
    assert code == 0 and "non-finite" in out and sweep.runs[0].run_id not in out
    for name in ("out.csv", "out.parquet"):
        code, _, err = cli("results", root, "--sweep", "grid", "--export", tmp_path / name)
        assert code == 0, err
        df = pd.read_csv(tmp_path / name) if name.endswith(".csv") else pd.read_parquet(tmp_path / name)
        assert list(df["run_id"]) == [r.run_id for r in sweep.runs]
        assert list(df["status"]) == ["ok", "ok", "ok", "failed"] and list(df["data.k"]) == [2, 2, 3, 3]
    code, _, _ = cli("results", root, "--columns", "all", "--export", tmp_path / "all.csv")
    full = pd.read_csv(tmp_path / "all.csv")
    assert {"train.lr", "seed", "wall_time", "attempts", "env.torch", "hierarchy_hash"} <= set(full.columns)


def test_results_errors(tmp_path, cli, store):
    _, root, _ = store
    one_line_error(*cli("results", tmp_path)[::2], "not a results store")
    one_line_error(*cli("results", root, "--filter", "data.kk=2")[::2], "data.kk", "did you mean 'data.k'")
    one_line_error(*cli("results", root, "--filter", "nonsense")[::2], "--filter")
    one_line_error(*cli("results", root, "--filter", "status>ok")[::2], "number")
    one_line_error(*cli("results", root, "--columns", "run_id,bogus")[::2], "bogus")
    one_line_error(*cli("results", root, "--export", tmp_path / "x.xlsx")[::2], ".csv or .parquet")
    one_line_error(*cli("results", root, "--sweep", "gird")[::2], "did you mean 'grid'")

"""The Ray executor on a real local Ray cluster (loopback): the same sweep file as the local
executor, the same run ids, failures recorded, finished runs skipped."""

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'granularity[ray]')")

from granularity.sweeps.runner import run_sweep  # noqa: E402
from granularity.sweeps.spec import load_sweep  # noqa: E402
from granularity.sweeps.store import ResultsStore  # noqa: E402

from sweep_helpers import TINY_BASE, write_sweep  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (starting one costs ~10-20 s)."""
    # address="local": a new instance even when another Ray runs on this machine (ray.init() would join it)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_sweep_through_ray(cluster, tmp_path):
    base = {**TINY_BASE, "model": {"m": 4, "train_second_layer": True}}
    file = write_sweep(tmp_path / "ray.yaml", axes={"data.k": [2, 3]}, zip=[{"train.lr": [0.5, 1e6]}], seeds=1,
                       base=base)
    store = tmp_path / "store"
    logs = []
    summary = run_sweep(file, store, executor="ray", address=cluster, log=logs.append)
    assert summary["total"] == 4 and summary["counts"] == {"ok": 2, "failed": 2}, logs
    assert any(line.startswith("ray:") for line in logs)
    expected = {r.run_id for r in load_sweep(file).runs}
    with ResultsStore(store, create=False) as st:
        rows = {r["run_id"]: r for r in st.rows()}
    assert set(rows) == expected
    for r in rows.values():
        if r["params"]["train.lr"] == 1e6:
            assert r["status"] == "failed" and "non-finite" in r["error"]
        else:
            assert r["status"] == "ok" and r["metrics"]["coarse.map.hard"] is not None
            assert (store / "runs" / r["run_id"] / "result.json").exists()
    again = run_sweep(file, store, executor="ray", address=cluster, retry_failed=False)
    assert again["ran"] == 0 and again["skipped"] == 4


def test_cli_runs_the_same_file_on_ray(cluster, tmp_path, cli):
    file = write_sweep(tmp_path / "one.yaml", axes={}, seeds=1)
    store = tmp_path / "store"
    code, out, err = cli("sweep", file, "--out", store, "--executor", "ray", "--address", cluster, "--quiet")
    assert code == 0 and "1 ok" in out, err
    with ResultsStore(store, create=False) as st:
        assert [r["run_id"] for r in st.rows()] == [load_sweep(file).runs[0].run_id]

"""The Ray executor on a two-node Ray cluster on loopback (two `ray start` nodes, each with
1 CPU and 1 fake GPU): runs reserve a GPU each and spread over both nodes, each sees only its
own GPU id; the address comes from RAY_ADDRESS; a node killed mid-sweep loses no run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'granularity[ray]')")

from granularity.sweeps.runner import run_sweep  # noqa: E402
from granularity.sweeps.store import ResultsStore  # noqa: E402

from sweep_helpers import TINY_BASE, write_sweep  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(temp_dir: str, *args: str) -> int:
    """`ray start` a node in a new session (it returns once the node is up); returns the process
    group of everything that node runs."""
    proc = subprocess.Popen([RAY, "start", "--num-cpus", "1", "--num-gpus", "1", "--disable-usage-stats", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "RAY_TMPDIR": temp_dir, "RAY_AUTH_MODE": "disabled"})
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-2000:]
    return proc.pid


def _kill_node(pgid: int) -> None:
    """SIGKILL every process of one node, one by one (never `ray stop`: it stops every Ray on
    the machine)."""
    for pid in [int(d) for d in os.listdir("/proc") if d.isdigit()]:
        try:
            if os.getpgid(pid) == pgid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def two_nodes():
    temp_dir = tempfile.mkdtemp(prefix="gr-ray-")  # short (socket paths) and not /tmp/ray: other Rays stay unaffected
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[int] = []
    try:
        nodes.append(_start(temp_dir, "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                            "--include-dashboard=false", "--temp-dir", temp_dir,
                            "--resources", json.dumps({"head_node": 1})))
        nodes.append(_start(temp_dir, "--address", address, "--node-ip-address", "127.0.0.1",
                            "--resources", json.dumps({"worker_node": 1})))
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        deadline = time.time() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.time() < deadline, "the second Ray node did not join"
            time.sleep(0.5)
        ids = {("head" if "head_node" in n["Resources"] else "worker"): n["NodeID"] for n in ray.nodes() if n["Alive"]}
        ray.shutdown()  # the sweep connects through RAY_ADDRESS
        yield address, ids, nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for pgid in reversed(nodes):
            _kill_node(pgid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _placements(store: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (store / "runs").glob("*/placement.json")}


@pytest.mark.slow
def test_runs_spread_over_nodes_and_gpus_and_survive_a_killed_node(two_nodes, tmp_path, monkeypatch):
    # ~60-120 s on the loaded 2-core test machine (two nodes start), seconds of it the sweep
    address, node_ids, nodes = two_nodes
    monkeypatch.setenv("RAY_ADDRESS", address)  # no --address: the environment names the cluster
    # ~4-6 s per run on a loaded machine, so that the worker node is killed while computing one
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 600}}
    file = write_sweep(tmp_path / "g.yaml", axes={"data.k": [2, 3, 4]}, seeds=2, base=base,
                       resources={"gpus_per_run": 1, "cpus_per_run": 1})
    store = tmp_path / "store"
    logs: list[str] = []
    killed: dict[str, str] = {}

    def kill_worker_node_mid_run() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            for rid, place in _placements(store).items():
                if place.get("ray_node_id") == node_ids["worker"] and not (store / "runs" / rid / "result.json").exists():
                    killed["run"] = rid
                    _kill_node(nodes[1])
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_worker_node_mid_run)
    killer.start()
    summary = run_sweep(file, store, executor="ray", log=logs.append)
    killer.join()
    assert summary["counts"] == {"ok": 6}, logs  # none lost
    assert any(f"Ray cluster at {address}" in line and "1 GPUs" in line for line in logs), logs
    assert killed, "the worker node never got a run"
    assert any(line.startswith(f"retrying {killed['run']}") for line in logs), logs
    places = _placements(store)
    assert set(places) == {r["run_id"] for r in ResultsStore(store, create=False).rows()}
    for place in places.values():  # each run had exactly one GPU, and CUDA_VISIBLE_DEVICES is it
        assert len(place["ray_gpu_ids"]) == 1 and place["CUDA_VISIBLE_DEVICES"] == place["ray_gpu_ids"][0]
    # the killed node's run was computed again on the surviving head node
    assert places[killed["run"]]["ray_node_id"] == node_ids["head"]
    # before the kill, runs went to both nodes: the worker node got the killed run, the head others
    assert node_ids["head"] in {p["ray_node_id"] for p in places.values()}
    with ResultsStore(store, create=False) as st:
        rows = st.rows()
    assert all(r["status"] == "ok" and r["metrics"]["fine.map.hard"] is not None for r in rows)
    assert {r["attempts"] for r in rows if r["run_id"] == killed["run"]} == {2}  # started twice: lost once
    assert os.environ["RAY_ADDRESS"] == address

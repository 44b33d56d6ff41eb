"""Sweep throughput on one small grid: local workers vs a 2-node Ray cluster on loopback vs
submitit's local executor, each a `granularity sweep` command on this machine.

    python benchmarks/sweep_executors.py [--out benchmarks/results/sweep-executors.json]

The grid: the tiny simulator config of the tests, data.k in {2, 3, 4, 5} x 2 seeds (8 runs of
~1 s of compute each); 2 runs at a time everywhere (local: 2 workers x 1 thread; Ray: two nodes
of 1 CPU + 1 fake GPU, 1 GPU per run; submitit: 2 jobs at a time). Wall time is the whole
command (process start, Ray connection, job start-up included) and the sweep's own time (from
the store opened to the last run recorded); the load average is recorded with each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

GRID = {
    "name": "bench",
    "kind": "simulate",
    "base": {
        "data": {"d": 32, "P": 6, "k": 3}, "model": {"m": 4},
        "train": {"n_train": 120, "steps": 40, "batch_size": 32, "log_points": 5},
        "transfer": {"n_test": 100, "probe_steps": 20, "finetune_steps": 20},
    },
    "axes": {"data.k": [2, 3, 4, 5]},
    "seeds": 2,
}
RAY = str(Path(sys.executable).with_name("ray"))


def sweep(file: Path, store: Path, *args: str, env: dict | None = None) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "granularity.cli.main", "sweep", str(file), "--out", str(store),
                           "--quiet", *args], capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sweep {args} failed: {proc.stderr[-2000:]}")
    inner = float(re.search(r", ([0-9.]+) s; store", proc.stdout).group(1))
    return {"command_s": round(wall, 1), "sweep_s": inner, "runs_per_min": round(8 / wall * 60, 1),
            "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1), "args": list(args)}


def ray_nodes(temp: str) -> tuple[str, list[int]]:
    """Two `ray start` nodes (1 CPU + 1 fake GPU each), each in its own session: returns the
    address and the process groups of their processes."""
    env = {**os.environ, "RAY_TMPDIR": temp, "RAY_AUTH_MODE": "disabled"}
    port = 46000 + os.getpid() % 1000
    pgids = []
    for extra in (["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", temp],
                  ["--address", f"127.0.0.1:{port}"]):
        p = subprocess.Popen([RAY, "start", "--num-cpus", "1", "--num-gpus", "1", "--node-ip-address", "127.0.0.1",
                              "--disable-usage-stats", *extra], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        pgids.append(p.pid)
        out, _ = p.communicate(timeout=300)
        if p.returncode != 0:
            kill_nodes(pgids)
            raise SystemExit(out[-3000:])
    return f"127.0.0.1:{port}", pgids


def kill_nodes(pgids: list[int]) -> None:
    """SIGKILL the processes of our nodes one by one (never `ray stop`: every Ray on the machine)."""
    for pid in [int(d) for d in os.listdir("/proc") if d.isdigit()]:
        try:
            if os.getpgid(pid) in pgids:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/sweep-executors.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gr-bench-"))
    file = work / "grid.yaml"
    file.write_text(yaml.safe_dump(GRID))
    res = {"grid": "simulate tiny config, data.k in {2,3,4,5} x 2 seeds = 8 runs; 2 runs at a time",
           "machine_cores": os.cpu_count()}
    try:
        res["local"] = sweep(file, work / "local", "--workers", "2", "--threads", "1")
        temp = tempfile.mkdtemp(prefix="gr-ray-")
        pgids: list[int] = []
        try:
            t0 = time.perf_counter()
            address, pgids = ray_nodes(temp)
            res["ray_cluster_start_s"] = round(time.perf_counter() - t0, 1)
            res["ray_2node"] = sweep(file, work / "ray", "--executor", "ray", "--gpus-per-run", "1",
                                     "--cpus-per-run", "1", env={"RAY_ADDRESS": address})
        finally:
            kill_nodes(pgids)
            shutil.rmtree(temp, ignore_errors=True)
        res["submitit_local"] = sweep(file, work / "slurm", "--executor", "slurm", "--slurm-cluster", "local",
                                      "--workers", "2", "--threads", "1")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

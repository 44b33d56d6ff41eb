"""Timing, matmul ceilings, machine description and peak-RSS subprocesses."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call, with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Time every function ``repeats`` times, alternating between them (ABAB..., order reversed
    on every other round) so that a change of machine load hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(fns[name], device))
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def matmul_fn(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None
              ) -> tuple[Callable[[], Any], float]:
    """A ``torch.mm`` of two large square matrices and its FLOPs (2 n^3)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * n**3


class tf32:
    """Context: allow TF32 matmuls on CUDA (no effect on the CPU)."""

    def __enter__(self):
        self.old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        return self

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.old


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    from granularity.utils.io import environment

    env = environment(str(device))
    env["cpu_model"] = cpu_model()
    env["hostname"] = platform.node()
    try:
        env["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    env["blas"] = "mkl" if torch.backends.mkl.is_available() else "other"
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return env


def peak_rss(kind: str, args: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run ``granularity.bench.rss <kind>`` in a fresh interpreter; return its JSON (which holds
    ``maxrss_mib``, the child's own peak resident set size from ``getrusage``)."""
    cmd = [sys.executable, "-m", "granularity.bench.rss", kind, json.dumps(args)]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the same thread count as this process
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"peak-RSS subprocess {kind} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])

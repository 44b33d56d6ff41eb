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
                warmup: int = 1, ceilings: Ceilings | None = None) -> dict[str, list[float]]:
    """Time every function ``repeats`` times, alternating between them (ABAB..., order reversed
    on every other round) so that a change of machine load hits all of them alike. With
    ``ceilings``, its matmuls join the rotation and their samples are added to the run's."""
    if ceilings is not None:
        fns = {**fns, **ceilings.fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(fns[name], device))
    if ceilings is not None:
        ceilings.record({k: times.pop(k) for k in ceilings.fns})
    return times


def spread(xs: list[float]) -> dict[str, float]:
    """Median, min, max and count of repeated timings (seconds)."""
    return {"median": median(xs), "min": float(min(xs)), "max": float(max(xs)), "n": len(xs)}


class Ceilings:
    """The run's matrix-multiply ceilings, one per dtype (float32; bfloat16 where the hardware has
    a fast bf16 path). Every benchmark interleaves these matmuls with its own calls, and a
    ceiling is the best rate of all samples of the whole run: one figure per dtype, not one
    re-measured per case (noise would then move every ratio)."""

    def __init__(self, device: torch.device, n: int | None = None):
        from granularity.utils.device import bf16_fast

        self.device = device
        self.dtypes = ["float32"] + (["bfloat16"] if bf16_fast(device) else [])
        self.fns: dict[str, Callable[[], Any]] = {}
        self.flops = 0.0
        for dt in self.dtypes:
            self.fns[f"mm_{dt}"], self.flops = matmul_fn(device, getattr(torch, dt), n)
        self.n = n or (8192 if device.type == "cuda" else 2048)
        self.samples: dict[str, list[float]] = {dt: [] for dt in self.dtypes}

    def record(self, times: dict[str, list[float]]) -> None:
        for key, ts in times.items():
            self.samples[key[3:]].extend(ts)

    def best_gflops(self, dtype: str) -> float:
        if not self.samples.get(dtype):  # no benchmark ran yet: take a few samples now
            interleaved({}, 3, self.device, ceilings=self)
        return self.flops / min(self.samples[dtype]) / 1e9

    def summary(self) -> dict[str, Any]:
        return {dt: {"best_gflops": self.best_gflops(dt), "median_gflops": self.flops / median(ts) / 1e9,
                     "worst_gflops": self.flops / max(ts) / 1e9, "samples": len(ts),
                     "shape": f"{self.n}x{self.n} @ {self.n}x{self.n}"}
                for dt, ts in self.samples.items()}


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


def cpu_flags() -> list[str]:
    """Which of the CPU's bfloat16 matmul paths (AVX512-BF16, AMX) this machine has."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), []))
    except OSError:
        return []
    return sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def machine(device: torch.device) -> dict[str, Any]:
    from granularity.utils.io import environment

    env = environment(str(device))
    env["cpu_model"] = cpu_model()
    env["cpu_flags"] = cpu_flags()  # the matmul fast paths: a bf16 ceiling with AMX is several times one without
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

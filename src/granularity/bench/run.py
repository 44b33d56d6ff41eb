"""Run the benchmarks and write one JSON with every figure, the machine, versions, device and
load average."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from granularity.bench.common import load_average, machine
from granularity.errors import unknown_name
from granularity.utils.device import resolve_device
from granularity.utils.io import check_writable, write_json

# name -> (figure number, description)
BENCHMARKS: dict[str, tuple[int, str]] = {
    "step": (1, "simulator training step: achieved FLOP/s / the run's best matmul FLOP/s per dtype (large preset)"),
    "seeds": (2, "8 seeds of the paper coarse model batched vs sequential (speed-up)"),
    "whole": (3, "simulate(paper, 5 seeds) vs a peer-style nn.Module/DataLoader implementation (speed-up)"),
    "engine": (4, "real-data engine images/s / bare training loop images/s; peak RSS of a run"),
    "generator": (5, "generator samples/s; peak RSS of streamed evaluation vs number of samples"),
    "fused": (6, "K runs as one fused model vs one by one, K = 1..16 (64 on CUDA): default CNN, MLP, the paired designs' CNN; where a solo step's time goes; peak RSS"),
}


def parse_only(only: str | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = [x.strip() for x in only.split(",") if x.strip()]
    for n in names:
        if n not in BENCHMARKS:
            raise unknown_name("benchmark", n, BENCHMARKS)
    return names


def default_name(device: torch.device, tiny: bool) -> str:
    if device.type == "cuda":
        gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
        name = f"cuda-{gpu}"
    else:
        name = f"cpu-{torch.get_num_threads()}core"
    return name + ("-tiny" if tiny else "")


def run_benchmarks(device: str | torch.device = "auto", only: str | list[str] | None = None, tiny: bool = False,
                   full: bool = False, scale: float | None = None, out: str | Path | None = None,
                   name: str | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the selected benchmarks; return the record (and write ``out/<name>.json`` if ``out``).

    ``tiny``: smoke-test sizes (seconds). ``full``: the full-size comparison 3 (scale 1) and
    the paper data for the generator's memory figure. ``scale``: step counts of comparison 3.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    names = parse_only(",".join(only) if isinstance(only, list) else only)
    out_dir = check_writable(out) if out is not None else None
    scale = scale if scale is not None else (1.0 if full else 0.1)
    log = log or (lambda s: None)
    record: dict[str, Any] = {
        "schema": 2,
        "machine": machine(device),
        "device": str(device),
        "options": {"only": names, "tiny": tiny, "full": full, "scale": scale},
        "load_average_before": load_average(),
        "results": {},
    }
    t_all = time.perf_counter()
    from granularity.bench.common import Ceilings

    ceilings = Ceilings(device, 512 if tiny else None)  # one per dtype for the whole run
    for n in names:
        t0 = time.perf_counter()
        log(f"bench {n}: {BENCHMARKS[n][1]} ...")
        load0 = load_average()
        if n == "step":
            from granularity.bench.simulator import bench_step

            res = bench_step(device, tiny, ceilings=ceilings)
        elif n == "seeds":
            from granularity.bench.simulator import bench_seeds

            res = bench_seeds(device, tiny, steps=3000 if full else None, ceilings=ceilings)
        elif n == "whole":
            from granularity.bench.whole import bench_whole

            res = bench_whole(device, tiny, scale, ceilings=ceilings)
        elif n == "engine":
            from granularity.bench.engine import bench_engine

            res = bench_engine(device, tiny, ceilings=ceilings)
        elif n == "fused":
            from granularity.bench.fused import bench_fused

            res = bench_fused(device, tiny, ceilings=ceilings)
        else:
            from granularity.bench.simulator import bench_generator

            res = bench_generator(device, tiny, eval_preset="paper" if full else "quick")
        res["figure"] = BENCHMARKS[n][0]
        res["seconds"] = time.perf_counter() - t0
        res["load_average"] = {"before": load0, "after": load_average()}
        record["results"][n] = res
        if n != "step":  # figure 1's ratios wait for the run's final ceilings
            log(f"bench {n}: {summary_line(n, res)} ({res['seconds']:.0f} s)")
    record["ceilings"] = ceilings.summary()
    if "step" in record["results"]:
        from granularity.bench.simulator import step_ratios

        step_ratios(record["results"]["step"], ceilings)
        log(f"bench step: {summary_line('step', record['results']['step'])}")
    if "fused" in record["results"]:  # fractions of the run's final ceiling
        from granularity.bench.fused import fused_ratios

        fused_ratios(record["results"]["fused"], ceilings)
    record["seconds"] = time.perf_counter() - t_all
    record["load_average_after"] = load_average()
    record["summary"] = {n: {"figure": r["figure"], "value": r["value"], "target": r["target"], "met": r["met"]}
                         for n, r in record["results"].items()}
    if out_dir is not None:
        path = out_dir / f"{name or default_name(device, tiny)}.json"
        write_json(path, record)
        record["path"] = str(path)
    return record


def summary_line(name: str, r: dict[str, Any]) -> str:
    ok = "met" if r["met"] else "MISSED"
    if name == "step":
        return "step/ceiling: " + "; ".join(
            f"{case} {prec} {st['gflops']:.0f} GFLOP/s = " + ", ".join(f"{v:.2f} {k}" for k, v in st["ratio"].items())
            for case, c in r["cases"].items() for prec, st in c["step"].items()) + f"; target >= {r['target']} {ok}"
    if name == "seeds":
        return (f"batched {r['batched_seconds']:.2f} s vs sequential {r['sequential_seconds']:.2f} s: "
                f"x{r['speedup']:.1f}, results agree={r['results_agree']}; target >= 3 {ok}")
    if name == "whole":
        return (f"simulate {r['simulator_seconds']:.1f} s vs baseline {r['baseline_seconds']:.1f} s: x{r['speedup']:.1f} "
                f"(scale {r['scale']}), errors same within noise={r['comparison']['all_same_within_noise']}; "
                f"target >= 3 {ok}")
    if name == "engine":
        ips = r["images_per_s"]
        return (f"engine {ips['engine']:.0f} img/s vs bare {ips['bare']:.0f} img/s: {r['ratio']:.2f} "
                f"(no augmentation {r['ratio_no_augment']:.2f}); run peak RSS {r['run_rss']['maxrss_mib']:.0f} MiB"
                + (f"; bf16 engine {ips['engine_bf16']:.0f} vs bare {ips['bare_bf16']:.0f} img/s: {r['ratio_bf16']:.2f}"
                   if "ratio_bf16" in r else "") + f"; target >= {r['target']} {ok}")
    if name == "fused":
        from granularity.bench.fused import summary

        return summary(r)
    rss = r["eval_rss"]
    return (f"{r['samples_per_s']:.0f} samples/s; eval peak RSS "
            + ", ".join(f"{k}: {v['maxrss_mib']:.0f} MiB" for k, v in rss.items())
            + f" (ratio {r['rss_ratio_largest_to_smallest']:.2f}); {ok}")

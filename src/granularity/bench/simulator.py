"""Simulator figures: training-step FLOP/s against the matmul ceiling (1), many seeds as one
batched computation against sequential runs (2), generator speed and streamed-evaluation
memory (5)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from granularity.bench.common import Ceilings, interleaved, median, peak_rss, spread, tf32
from granularity.theory.config import SimConfig
from granularity.theory.data import HierarchicalMultiView, generator
from granularity.theory.model import PatchCNN
from granularity.theory.presets import get_preset
from granularity.theory.train import Gather, SeedBatch, _batches, evaluate, pretrain
from granularity.utils.config import deep_merge


def preset_config(name: str, **overrides: Any) -> SimConfig:
    raw = deep_merge(get_preset(name).raw(), overrides)
    return SimConfig.build(raw)


def step_flops(S: int, B: int, P: int, d: int, N: int) -> float:
    """The two batched matrix multiplies of a step (forward and weight gradient)."""
    return 2 * (2.0 * S * B * P * d * N)


def bench_step(device: torch.device, tiny: bool = False, repeats: int = 7, ceilings: Ceilings | None = None
               ) -> dict[str, Any]:
    """Figure 1: achieved FLOP/s of one training step (minibatch gather, forward, hand-written
    backward, SGD update) of the fine model, in float32 and (where the hardware has it) with
    bf16 operands, interleaved with the run's matmul ceilings. The ratios to the run-wide best
    float32 and bf16 ceilings are filled in by :func:`step_ratios` once the whole run is done
    (on CUDA, TF32 is allowed for the float32 step and ceiling)."""
    ceilings = ceilings or Ceilings(device, 512 if tiny else None)
    cases = {"paper": preset_config("paper"), "large": preset_config("large")}
    if tiny:
        cases = {"paper": preset_config("quick", seeds=2, seed_batch=2),
                 "large": preset_config("quick", data={"d": 128, "P": 16, "k": 8}, seeds=2, seed_batch=2)}
        repeats = 2
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "precisions": ceilings.dtypes, "cases": {}}
    with tf32():
        for name, cfg in cases.items():
            S = min(cfg.seed_batch, cfg.seeds)
            d, P, B = cfg.data.d, cfg.data.P, cfg.train.batch_size or 128
            O = cfg.data.nodes_per_level[-1]  # the fine model (the larger one)
            n = 4 * B  # a few batches of random inputs: the step's cost does not depend on n
            g = torch.Generator().manual_seed(0)
            X = (torch.randn(S, n, P, d, generator=g) / math.sqrt(d)).to(device)
            Y = torch.randint(O, (S, n), generator=g).to(device)
            fns = {}
            for prec in ceilings.dtypes:
                mcfg = cfg.model.model_copy(update={"precision": prec})
                model = PatchCNN(S, O, d, mcfg, [generator(i) for i in range(S)], device)
                fns[prec] = _step_fn(model, Gather(model.cast(X), Y), n, B, S, device)
            t = interleaved(fns, repeats, device, ceilings=ceilings)
            flops = step_flops(S, B, P, d, model.N)
            out["cases"][name] = {
                "preset": cfg.name, "S": S, "B": B, "P": P, "d": d, "N": model.N, "step_gflop": flops / 1e9,
                "step": {prec: {"seconds": spread(ts), "gflops": flops / median(ts) / 1e9} for prec, ts in t.items()},
                "samples": {k: [round(v, 5) for v in vs] for k, vs in t.items()},
            }
            del X, Y, fns
    out["target"] = 0.6 if "bfloat16" in ceilings.dtypes else (0.5 if device.type == "cuda" else 0.7)
    out["target_of"] = ("large preset, bf16 step / bf16 ceiling" if "bfloat16" in ceilings.dtypes
                        else "large preset, float32 step / float32 ceiling")
    return out


def _step_fn(model: PatchCNN, gather: Gather, n: int, B: int, S: int, device: torch.device):
    batches = iter(_batches(n, B, 10**9, [generator(100 + i) for i in range(S)]))

    def step():
        model.step(*gather(next(batches).to(device)), 1e-3)  # small lr: a stable run

    return step


def step_ratios(res: dict[str, Any], ceilings: Ceilings) -> None:
    """Fill in figure 1's ratios against the run's best ceiling of each dtype."""
    best = {dt: ceilings.best_gflops(dt) for dt in ceilings.dtypes}
    for case in res["cases"].values():
        for st in case["step"].values():
            st["ratio"] = {f"vs_{dt}_ceiling": st["gflops"] / g for dt, g in best.items()}
    prec = "bfloat16" if "bfloat16" in best else "float32"
    res["value"] = res["cases"]["large"]["step"][prec]["ratio"][f"vs_{prec}_ceiling"]
    res["met"] = bool(res["value"] >= res["target"])


def bench_seeds(device: torch.device, tiny: bool = False, steps: int | None = None, repeats: int = 2,
                ceilings: Ceilings | None = None) -> dict[str, Any]:
    """Figure 2: pretraining S=8 seeds of the paper's coarse model as one batched computation
    versus one seed after another, on the same seeds; the per-seed results must agree. Measured
    in float32 (the figure's value) and, where the hardware has it, with bf16 operands (batched
    vs sequential in bf16, under ``"bfloat16"``), all four interleaved."""
    S = 8
    if tiny:
        cfg = preset_config("quick", seeds=S, seed_batch=S, train={"steps": steps or 60},
                            transfer={"protocols": ["map"], "n_test": 200})
        repeats = 1
    else:
        cfg = preset_config("paper", seeds=S, seed_batch=S, train={"steps": steps or 300},
                            transfer={"protocols": ["map"]})
    ceilings = ceilings or Ceilings(device, 512 if tiny else None)
    level = cfg.source_level("coarse")
    cfgs = {p: cfg.model_copy(update={"model": cfg.model.model_copy(update={"precision": p})}) for p in ceilings.dtypes}
    runs = {p: (c, SeedBatch.build(c, list(range(S)), device), [SeedBatch.build(c, [s], device) for s in range(S)])
            for p, c in cfgs.items()}
    res: dict[str, Any] = {}
    fns = {}
    for p, (c, batched, singles) in runs.items():
        fns[f"batched_{p}"] = lambda c=c, b=batched, p=p: res.__setitem__(("batched", p), pretrain(c, b, level))
        fns[f"sequential_{p}"] = lambda c=c, ss=singles, p=p: res.__setitem__(("sequential", p), [pretrain(c, sb, level) for sb in ss])
    t = interleaved(fns, repeats, device, warmup=0, ceilings=ceilings)
    out = {p: _seeds_agreement(runs[p][0], runs[p][1], runs[p][2], res[("batched", p)], res[("sequential", p)],
                               t[f"batched_{p}"], t[f"sequential_{p}"]) for p in runs}
    f32 = out.pop("float32")
    # the bound: both sides do the same GEMM FLOPs, so batching can win at most what the
    # sequential runs leave of the matmul ceiling
    mm_rate = ceilings.best_gflops("float32") * 1e9  # the run's ceiling so far
    flops = cfg.train.steps * step_flops(S, cfg.train.batch_size or cfg.train.n_train, cfg.data.P, cfg.data.d,
                                         res[("batched", "float32")].model.N)
    seq_rate = flops / f32["sequential_seconds"]
    return {
        "gemm_gflop": flops / 1e9, "sequential_gflops": seq_rate / 1e9, "batched_gflops": flops / f32["batched_seconds"] / 1e9,
        "matmul_fp32_gflops": mm_rate / 1e9, "max_possible_speedup": mm_rate / seq_rate,
        "preset": cfg.name, "S": S, "steps": cfg.train.steps, "N": res[("batched", "float32")].model.N,
        **f32, **out,
        "target": 3.0, "value": f32["speedup"], "met": bool(f32["speedup"] >= 3.0 and f32["results_agree"]),
    }


def _seeds_agreement(cfg: SimConfig, batched: SeedBatch, singles: list[SeedBatch], pre_b, pre_s: list,
                     t_b: list[float], t_s: list[float]) -> dict[str, Any]:
    """Speed-up of one precision and whether batched and sequential runs agree: final weights
    and test errors per seed."""
    Wb = pre_b.model.W.cpu()
    Ws = torch.cat([p.model.W.cpu() for p in pre_s])
    w_diff = float((Wb - Ws).abs().max() / Ws.abs().max())
    eb = evaluate(cfg, batched, {"coarse": pre_b}, {})[("coarse", "map")]
    es = [evaluate(cfg, sb, {"coarse": p}, {})[("coarse", "map")] for sb, p in zip(singles, pre_s)]
    err_b = {k: eb[k].tolist() for k in ("easy", "hard")}
    err_s = {k: [float(e[k][0]) for e in es] for k in ("easy", "hard")}
    e_diff = max(abs(a - b) for k in err_b for a, b in zip(err_b[k], err_s[k]))
    speedup = median(t_s) / median(t_b)
    return {
        "batched_seconds": median(t_b), "sequential_seconds": median(t_s),
        "samples": {"batched": t_b, "sequential": t_s}, "spread": {"batched": spread(t_b), "sequential": spread(t_s)},
        "speedup": speedup, "max_rel_weight_diff": w_diff, "max_error_diff": e_diff,
        "errors_batched": err_b, "errors_sequential": err_s,
        "results_agree": w_diff < 1e-3 and e_diff <= 2.0 / cfg.transfer.n_test,
    }


def bench_generator(device: torch.device, tiny: bool = False, repeats: int = 3, eval_preset: str = "quick"
                    ) -> dict[str, Any]:
    """Figure 5: samples/s of the generator (paper and large presets), and peak RSS of a
    streamed evaluation on 10^4, 10^5, 10^6 test samples, each in a fresh process (the
    ``eval_preset``'s data: ``quick`` by default so that 10^6 samples take seconds, ``paper``
    with ``--full``)."""
    out: dict[str, Any] = {"speed": {}}
    names = {"paper": "paper", "large": "large"} if not tiny else {"quick": "quick"}
    chunk = 4096 if not tiny else 512
    for name in names:
        dist = HierarchicalMultiView(preset_config(name).data, seed=0)
        gen = generator(1)
        t = interleaved({"sample": lambda: dist.sample(chunk, gen)}, repeats, torch.device("cpu"))
        out["speed"][name] = {"chunk": chunk, "samples_per_s": chunk / median(t["sample"]),
                              "seconds": t["sample"]}
    sizes = [500, 2000] if tiny else [10**4, 10**5, 10**6]
    rss = {}
    for n in sizes:
        rss[str(n)] = peak_rss("generator_eval", {"n": n, "device": str(device), "preset": "quick" if tiny else eval_preset})
    first, last = rss[str(sizes[0])], rss[str(sizes[-1])]
    ratio = last["maxrss_mib"] / first["maxrss_mib"]
    out.update({
        "eval_rss": rss, "eval_sizes": sizes, "eval_preset": "quick" if tiny else eval_preset,
        "rss_ratio_largest_to_smallest": ratio,
        "samples_per_s": out["speed"].get("paper", next(iter(out["speed"].values())))["samples_per_s"],
        "target": "peak RSS does not grow with n (ratio <= 1.1)",
        "value": ratio, "met": bool(ratio <= 1.1),
    })
    return out


def generator_eval(n: int, device: str, preset: str) -> dict[str, Any]:
    """Evaluate a (briefly trained) coarse model of the paper preset on ``n`` streamed test
    samples (n/2 easy + n/2 hard); run by the peak-RSS subprocess."""
    import time

    cfg = preset_config(preset, seeds=1, seed_batch=1, train={"n_train": 256, "steps": 20},
                        transfer={"protocols": ["map"], "sources": ["coarse"], "n_test": max(1, n // 2)})
    sb = SeedBatch.build(cfg, [0], torch.device(device))
    pre = pretrain(cfg, sb, 1)
    t0 = time.perf_counter()
    err = evaluate(cfg, sb, {"coarse": pre}, {})[("coarse", "map")]
    return {"n": n, "seconds": time.perf_counter() - t0, "samples_per_s": 2 * cfg.transfer.n_test / (time.perf_counter() - t0),
            "easy": float(np.asarray(err["easy"])[0]), "hard": float(np.asarray(err["hard"])[0])}

"""Figure 6: K runs trained as one fused model vs the same K runs one after the other.

For the default CNN, the MLP and the paired designs' CNN (width 16, batch 32: ``cnn16-b32``)
and K = 1, 2, 4, 8, 16 (and 64 on CUDA): one epoch of K
independent runs (own seeds, permutations, augmentation, head sizes 2/4/10 in turn, own
optimisers) through :func:`~granularity.engine.fused.train_epoch_fused` against K calls of the
engine's :func:`~granularity.engine.train.train_epoch`, in the engine's default precision (bf16
autocast where the hardware has a fast path) and layout; every side interleaved with the others
and with the run's ceilings, repeated. Images/s count every run's images; the FLOP rate uses 3x
the forward pass's multiply-adds (the usual estimate of forward + backward) and is reported as a
fraction of the run's best bf16 matmul rate (float32 without bf16). Peak RSS of the largest
group, fused and sequential, each in a fresh process. Synthetic uint8 images of Fashion-MNIST's
shape (throughput does not depend on the pixels).

:func:`step_profile` says where one solo training step's time goes (convolutions and matmuls,
forward and backward, against everything else: BatchNorm, ReLU, pooling, the optimiser), from
torch's profiler, and the speed-up fusion could give if it ran the convolutions at the run's
bf16 matmul ceiling while the rest cost what it costs alone: ``t_step / (t_other +
conv_flops / ceiling)`` (and ``t_step / t_other`` if the convolutions took no time). Fusion does
not shrink the elementwise work, which moves the same bytes per image fused or not; what it can
shrink there is per-call overhead, which matters only at small batches (at batch 32 a fused
group may beat the estimate), not at the default batch of 128, where each op takes milliseconds.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from granularity.bench.common import Ceilings, interleaved, median, peak_rss, spread

SHAPE = (1, 28, 28)
HEADS = (10, 4, 2)  # head sizes of the runs, in turn (the fused heads are padded to the largest)
# case -> (model, model options, batch size): the default study's CNN, the MLP, and the paired
# designs' CNN at their batch size (experiments/designs.py STAGE_DEFAULTS)
CASES: dict[str, tuple[str, dict[str, Any], int]] = {"cnn": ("cnn", {}, 128), "mlp": ("mlp", {}, 128),
                                                     "cnn16-b32": ("cnn", {"width": 16}, 32)}
# profiler ops that are the convolutions and matmuls (forward and backward); the rest is "other"
_MATMUL_OPS = ("convolution", "mkldnn_convolution", "convolution_backward", "addmm", "mm", "bmm", "baddbmm",
               "linear", "matmul", "_convolution", "cudnn_convolution", "conv2d")


def _ks(device: torch.device, tiny: bool) -> tuple[int, ...]:
    if tiny:
        return (1, 2)
    return (1, 2, 4, 8, 16, 64) if device.type == "cuda" else (1, 2, 4, 8, 16)


def train_flops_per_image(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """3x the multiply-adds x 2 of one image's forward pass through the convolutions and linear
    layers of ``model`` (forward + backward, the usual estimate)."""
    flops = [0.0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            flops[0] += 2.0 * out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            flops[0] += 2.0 * m.in_features * m.out_features

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    was = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    model.train(was)
    for h in hooks:
        h.remove()
    return 3.0 * flops[0]


def _sides(case: str, k: int, n: int, device: torch.device, bf16: bool):
    """The fused and the sequential side of K runs of :data:`CASES` ``case`` (one epoch of ``n``
    images per run each call), built from the same K solo initialisations."""
    import copy

    from granularity.engine.fused import Member, train_epoch_fused
    from granularity.engine.train import (Normaliser, engine_layout, epoch_generator, make_optimizer, make_scheduler,
                                          train_epoch)
    from granularity.engine.config import TransferConfig
    from granularity.models import create_model
    from granularity.models.fused import fuse

    name, options, batch = CASES[case]
    stage = TransferConfig().pretrain.model_copy(update={"epochs": 10**6, "batch_size": batch})  # cosine ~ constant
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g).to(device)
    y10 = torch.randint(0, 10, (n,), generator=g).to(device)
    norm = Normaliser(x)
    solos = []
    for r in range(k):
        torch.manual_seed(r)
        solos.append(engine_layout(create_model(name, SHAPE, HEADS[r % len(HEADS)], **options).to(device), device, bf16))
    seq = copy.deepcopy(solos)
    members = [Member(x, y10 % HEADS[r % len(HEADS)], norm) for r in range(k)]
    steps = -(-n // stage.batch_size)

    def opt_sched(models):
        opts = [make_optimizer(m.parameters(), stage) for m in models]
        return opts, [make_scheduler(o, stage, steps) for o in opts]

    f_opts, f_scheds = opt_sched(solos)
    s_opts, s_scheds = opt_sched(seq)
    fused = fuse(solos)

    def fused_side():
        gens = [epoch_generator(r, "pretrain", 1) for r in range(k)]
        train_epoch_fused(fused, members, stage, f_opts, f_scheds, gens, device, bf16)

    def sequential_side():
        for r, m in enumerate(seq):
            train_epoch(m, x, members[r].y, norm, stage, s_opts[r], s_scheds[r], epoch_generator(r, "pretrain", 1),
                        device, bf16)

    return fused_side, sequential_side, train_flops_per_image(create_model(name, SHAPE, 10, **options), SHAPE)


def bench_fused(device: torch.device, tiny: bool = False, repeats: int = 5, ceilings: Ceilings | None = None,
                ks: tuple[int, ...] | None = None, models: tuple[str, ...] = tuple(CASES),
                images: int | None = None) -> dict[str, Any]:
    """Fused vs sequential images/s for every model and K (see the module docstring)."""
    from granularity.engine.train import bf16_active

    ks = ks or _ks(device, tiny)
    n = images or (64 if tiny else 512)  # images per run and call
    repeats = 1 if tiny else repeats
    bf16 = bf16_active(device, "auto")
    out: dict[str, Any] = {"ks": list(ks), "images_per_run": n, "precision": "bfloat16" if bf16 else "float32",
                           "head_sizes": list(HEADS), "cases": {c: {"model": CASES[c][0], "options": CASES[c][1],
                                                                   "batch_size": CASES[c][2]} for c in models},
                           "models": {}}
    for name in models:
        fns, flops = {}, 0.0
        for k in ks:
            fns[f"fused_{k}"], fns[f"sequential_{k}"], flops = _sides(name, k, n, device, bf16)
        t = interleaved(fns, repeats, device, ceilings=ceilings)
        rows = {}
        for k in ks:
            f, s = median(t[f"fused_{k}"]), median(t[f"sequential_{k}"])
            rows[str(k)] = {"fused_images_per_s": k * n / f, "sequential_images_per_s": k * n / s, "speedup": s / f,
                            "fused_gflops": k * n * flops / f / 1e9, "sequential_gflops": k * n * flops / s / 1e9,
                            "spread": {"fused": spread(t[f"fused_{k}"]), "sequential": spread(t[f"sequential_{k}"])}}
        out["models"][name] = {"train_flops_per_image": flops, "by_k": rows,
                               "step_profile": step_profile(name, device, bf16, repeats=2 if tiny else 10)}
    big = max(ks)
    args = {"device": str(device), "model": models[0], "k": big, "images": n}
    out["rss"] = {"k": big, "model": models[0], "fused": peak_rss("fused_group", {**args, "fused": True})}
    if not tiny:
        out["rss"]["sequential"] = peak_rss("fused_group", {**args, "fused": False})
    value = out["models"][models[0]]["by_k"][str(big)]["speedup"]
    target = 10.0 if device.type == "cuda" else 2.0
    out.update({"value": value, "target": target, "met": bool(value >= target), "value_is": f"{models[0]} speed-up at K={big}"})
    if ceilings is not None:
        fused_ratios(out, ceilings)
    return out


def step_profile(case: str, device: torch.device, bf16: bool, repeats: int = 10) -> dict[str, Any]:
    """Where one solo training step of :data:`CASES` ``case`` spends its time (torch profiler,
    self time of every op over ``repeats`` steps after warm-up): the convolution/matmul ops
    (forward and backward) against the rest (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    _, sequential, flops = _sides(case, 1, CASES[case][2] * repeats, device, bf16)
    sequential()  # warm-up (first-call allocations, kernel choice)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        sequential()
    by_op: dict[str, float] = {}
    for ev in prof.key_averages():
        t = ev.self_device_time_total if device.type == "cuda" else ev.self_cpu_time_total
        by_op[ev.key] = by_op.get(ev.key, 0.0) + t / 1e6
    mm = sum(t for op, t in by_op.items() if op.removeprefix("aten::") in _MATMUL_OPS)
    total = sum(by_op.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
    return {"steps": repeats, "images": CASES[case][2] * repeats, "train_flops_per_image": flops,
            "seconds_profiled": total, "matmul_seconds": mm, "other_seconds": total - mm,
            "matmul_fraction": mm / total if total else float("nan"),
            "top_ops": [{"op": op, "seconds": t, "fraction": t / total} for op, t in top]}


def fused_bounds(res: dict[str, Any], best_gflops: float) -> None:
    """Each case's largest fused speed-up (module docstring): the other ops as they are, the
    convolutions/matmuls at ``best_gflops``; and the bound if they took no time at all."""
    for m in res["models"].values():
        p = m.get("step_profile")
        if not p:
            continue
        at_ceiling = p["images"] * p["train_flops_per_image"] / (best_gflops * 1e9)
        p["bound_convs_at_ceiling"] = p["seconds_profiled"] / (p["other_seconds"] + at_ceiling)
        p["bound_convs_free"] = p["seconds_profiled"] / max(p["other_seconds"], 1e-12)
        p["matmul_fraction_of_ceiling"] = at_ceiling / max(p["matmul_seconds"], 1e-12)


def fused_ratios(res: dict[str, Any], ceilings: Ceilings) -> None:
    """Each side's FLOP rate as a fraction of the run's best bf16 matmul rate (float32 where the
    hardware has no bf16 path); called again at the end of a run, when the ceilings are final."""
    dt = "bfloat16" if "bfloat16" in ceilings.dtypes else "float32"
    best = ceilings.best_gflops(dt)
    res["ceiling"] = {"dtype": dt, "best_gflops": best}
    fused_bounds(res, best)
    for m in res["models"].values():
        for row in m["by_k"].values():
            row["fused_fraction_of_ceiling"] = row["fused_gflops"] / best
            row["sequential_fraction_of_ceiling"] = row["sequential_gflops"] / best


def fused_group(device: str, model: str, k: int, images: int, fused: bool) -> dict[str, Any]:
    """One epoch of K runs, fused or one by one, for the peak-RSS subprocess."""
    from granularity.engine.train import bf16_active

    dev = torch.device(device)
    fused_side, sequential_side, _ = _sides(model, k, images, dev, bf16_active(dev, "auto"))
    (fused_side if fused else sequential_side)()
    return {"model": model, "k": k, "images_per_run": images, "fused": fused}


def markdown_rows(r: dict[str, Any]) -> list[str]:
    """Figure 6's rows of the benchmark table (``granularity.bench.report``)."""
    lines = []
    for name, m in r["models"].items():
        cells = "; ".join(
            f"K={k}: {row['fused_images_per_s']:.0f} vs {row['sequential_images_per_s']:.0f} img/s = **x{row['speedup']:.2f}**"
            + (f" ({row['fused_fraction_of_ceiling']:.2f} vs {row['sequential_fraction_of_ceiling']:.2f} of the "
               f"{r['ceiling']['dtype']} ceiling)" if "fused_fraction_of_ceiling" in row else "")
            for k, row in m["by_k"].items())
        top = name == r["value_is"].split()[0]
        lines.append(f"| 6 | {name}: K runs fused vs one by one ({r['precision']}, {r['images_per_run']} images per run) "
                     f"| {cells} | {'>= ' + str(r['target']) + ' at K=' + str(max(r['ks'])) if top else '-'} "
                     f"| {('yes' if r['met'] else 'no') if top else ''} |")
    for name, m in r["models"].items():
        p = m.get("step_profile") or {}
        if "bound_convs_at_ceiling" in p:
            lines.append(f"| 6 | {name}: one solo step, convolutions/matmuls vs the rest (profiler) | "
                         f"{p['matmul_fraction']:.2f} of the step in convolutions/matmuls (at "
                         f"{p['matmul_fraction_of_ceiling']:.2f} of the ceiling); fused speed-up at most "
                         f"x{p['bound_convs_at_ceiling']:.2f} with them at the ceiling, x{p['bound_convs_free']:.2f} "
                         f"if they took no time | - | - |")
    rss = r["rss"]
    seq = f" vs one by one {rss['sequential']['maxrss_mib']:.0f} MiB" if "sequential" in rss else ""
    lines.append(f"| 6 | peak RSS, {rss['k']} {rss['model']} runs fused | {rss['fused']['maxrss_mib']:.0f} MiB{seq} | - | - |")
    return lines


def summary(r: dict[str, Any]) -> str:
    """One line per model: fused vs sequential images/s and speed-up at each K."""
    parts = []
    for name, m in r["models"].items():
        ks = ", ".join(f"K={k} x{row['speedup']:.2f} ({row['fused_images_per_s']:.0f} vs "
                       f"{row['sequential_images_per_s']:.0f} img/s)" for k, row in m["by_k"].items())
        p = m.get("step_profile") or {}
        bound = f" (bound x{p['bound_convs_at_ceiling']:.2f})" if "bound_convs_at_ceiling" in p else ""
        parts.append(f"{name}: {ks}{bound}")
    rss = r["rss"]
    mem = f"; peak RSS K={rss['k']} fused {rss['fused']['maxrss_mib']:.0f} MiB" + (
        f" vs sequential {rss['sequential']['maxrss_mib']:.0f} MiB" if "sequential" in rss else "")
    return "; ".join(parts) + mem + f"; target >= {r['target']} {'met' if r['met'] else 'MISSED'}"


def bench_study_wall(design: str = "levels", config: dict[str, Any] | None = None, repeats: int = 1,
                     dataset: Any = None) -> dict[str, Any]:
    """Wall seconds of one study, fused and with ``fuse=False``, alternating (``repeats`` each),
    each in a fresh folder; the tables compared arm by arm (the difference of every row's mean
    within the sum of the two 95% CIs, or the two means equal)."""
    import shutil
    import tempfile
    import time

    from granularity.experiments.registry import run_study

    config = config or {}
    walls: dict[str, list[float]] = {"fused": [], "unfused": []}
    tables: dict[str, Any] = {}
    for r in range(repeats):
        for side in (("fused", "unfused") if r % 2 == 0 else ("unfused", "fused")):
            tmp = tempfile.mkdtemp(prefix="granularity-fused-study-")
            try:
                t0 = time.perf_counter()
                res = run_study(config, tmp, design=design, dataset=dataset, progress=False, simulate=False,
                                fuse=side == "fused")
                walls[side].append(time.perf_counter() - t0)
                tables[side] = res["table"]
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    rows = [_compare_rows(a, b) for a, b in zip(tables["fused"], tables["unfused"])]
    speedup = median(walls["unfused"]) / median(walls["fused"])
    return {"design": design, "config": config, "seconds": walls, "speedup": speedup, "rows": rows,
            "tables_same_within_ci": all(r["same"] for r in rows), "tables": tables}


def _half_width(fig: dict[str, Any]) -> float | None:
    """A figure's 95% CI half-width: ``ci``, or half of ``hi - lo`` (a bootstrap interval)."""
    if fig.get("ci") is not None:
        return fig["ci"]
    if fig.get("lo") is not None and fig.get("hi") is not None:
        return (fig["hi"] - fig["lo"]) / 2
    return None


def _compare_rows(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One table row fused vs unfused: every ``{mean, ci}`` figure in it, same within the CIs."""
    out: dict[str, Any] = {"row": {k: a[k] for k in ("arm", "cell", "transfer") if k in a}, "figures": {}}
    for key, v in a.items():
        if isinstance(v, dict) and "mean" in v and isinstance(b.get(key), dict):
            ma, mb = v["mean"], b[key]["mean"]
            tol = sum(c for c in (_half_width(v), _half_width(b[key])) if c is not None and not math.isnan(c))  # n = 1: no CI
            ok = ma == mb or (math.isnan(ma) and math.isnan(mb)) or abs(ma - mb) <= tol
            out["figures"][key] = {"fused": ma, "unfused": mb, "tolerance": tol, "same": bool(ok)}
    out["same"] = all(f["same"] for f in out["figures"].values())
    return out


def _row_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in ("arm", "cell", "transfer", "metric"))


def tables_against(tables: dict[str, list[dict[str, Any]]], committed: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """Each side's table (fused, unfused) against a committed ``results.json`` table, row by row
    (the same rows in the same order, else a :class:`GranularityError`): every row's figures the
    same within the sum of the two 95% CIs (:func:`_compare_rows`)."""
    from granularity.errors import GranularityError

    out: dict[str, Any] = {"results": path}
    for side, table in tables.items():
        if [_row_key(r) for r in table] != [_row_key(r) for r in committed]:
            raise GranularityError(f"The {side} table and {path} hold different rows (arm, cell, transfer, metric); "
                                   f"compare a record with the results of the same design and settings.")
        rows = [_compare_rows(a, b) for a, b in zip(table, committed)]
        out[side] = {"rows": len(rows), "same_within_ci": all(r["same"] for r in rows),
                     "differ": [r["row"] for r in rows if not r["same"]]}
    return out


if __name__ == "__main__":  # see the usage below: `python -m granularity.bench.fused -h`
    import argparse
    import json

    from granularity.bench.common import load_average, machine
    from granularity.utils.io import read_json, write_json

    from granularity.errors import GranularityError
    from granularity.experiments.registry import get_design

    ap = argparse.ArgumentParser(prog="python -m granularity.bench.fused",
                                 description="study: a whole study's wall time fused and unfused, and its tables compared; "
                                             "against: a record's tables against committed results.json (written into it).")
    ap.add_argument("what", choices=["study", "against"])
    ap.add_argument("design", nargs="?", default="levels",
                    help="study: the design (default levels, the default study); against: the record (OUT.json)")
    ap.add_argument("out", nargs="?", default=None, help="study: write the record as JSON here; against: results.json")
    ap.add_argument("--full", action="store_true", help="the design's full preset (10 seeds)")
    ap.add_argument("--repeats", type=int, default=1, help="times each side runs, interleaved (default 1)")
    ns = ap.parse_args()
    if ns.what == "against":
        if ns.out is None:
            ap.error("against needs a record and a results.json: against OUT.json RESULTS.json")
        try:
            rec = read_json(ns.design)
            rec["against"] = tables_against(rec["tables"], read_json(ns.out)["table"], ns.out)
        except (GranularityError, OSError, KeyError, ValueError) as exc:
            ap.error(f"cannot compare {ns.design} with {ns.out}: {exc}")
        write_json(ns.design, rec)
        print(json.dumps(rec["against"]))
        raise SystemExit(0)
    if ns.repeats < 1:
        ap.error(f"argument --repeats: must be >= 1, got {ns.repeats}")
    try:
        design = get_design(ns.design)
    except GranularityError as exc:
        ap.error(str(exc))
    config = dict(design.presets["full"]) if ns.full else {}
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the designs' device "auto"
    rec = {"machine": machine(dev), "load_average_before": load_average(), "full": ns.full,
           **bench_study_wall(ns.design, config, repeats=ns.repeats), "load_average_after": load_average()}
    if ns.out:
        write_json(ns.out, rec)
    print(json.dumps({k: rec[k] for k in ("design", "seconds", "speedup", "tables_same_within_ci")}))

"""``simulate``: run a simulator experiment over seeds into a run folder.

Run folder layout::

    config.json          resolved SimConfig
    env.json             versions, machine, device, git revision
    seeds/seed_<s>.json  one finished seed (errors, alignment summaries, final losses)
    seeds/seed_<s>.metrics.jsonl  its training curves
    alignment/seed_<s>_<source>.npz  steps (T,), alignment (T, N, M) = <w_r, v>, feature levels
    metrics.jsonl        all curves (rebuilt from the seeds at the end)
    result.json          mean and 95% CI over seeds of every figure, plus per-seed values
    figures/errors.png, figures/alignment.png

Seeds are trained ``seed_batch`` at a time as one batched computation; a finished seed is
written atomically as soon as its batch ends, and a rerun of the same command skips it. So
Ctrl-C (or a lost machine) loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from granularity.errors import GranularityError, RunFailedError
from granularity.theory.config import SimConfig
from granularity.theory.model import PatchCNN
from granularity.theory.train import (
    Head,
    Pretrained,
    SeedBatch,
    evaluate,
    feature_summary,
    finetune,
    level_keys,
    linear_probe,
    pretrain,
)
from granularity.utils.device import available_memory, bf16_fast, resolve_device
from granularity.utils.io import check_writable, environment, read_json, write_json, write_npz
from granularity.utils.stats import mean_ci

# fields that do not change any seed's result: a run may be resumed or extended with other values
_RUN_ONLY = ("seeds", "seed_batch", "device", "name", "checkpoint_every")


def config_hash(cfg: SimConfig) -> str:
    """Hash of everything that determines one seed's result."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in _RUN_ONLY}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def estimate_memory(cfg: SimConfig) -> int:
    """Bytes of the largest tensors of one seed batch (training set, activations, alignment)."""
    d, P, n = cfg.data.d, cfg.data.P, cfg.train.n_train
    S = min(cfg.seed_batch, cfg.seeds)
    N = cfg.model.m * max(cfg.data.nodes_per_level)
    B = cfg.train.batch_size or n
    train = 2 * S * n * P * d * 4  # the stacked samples and, on a GPU, their device copy
    acts = 3 * S * B * P * N * 4  # pre-activations, activations, masks of a step
    coef = S * min(n, 4096) * P * cfg.data.num_features * 4
    align = S * (cfg.train.log_points + 2) * N * cfg.data.num_features * 4 * len(cfg.transfer.sources)
    return train + acts + coef + align


def check_memory(cfg: SimConfig, limit: int | None = None) -> None:
    if limit is None:
        limit = available_memory("cpu")  # the simulator checks host memory, also for CUDA runs
        if limit is None:
            return
    need = estimate_memory(cfg)
    if need > 0.8 * limit:
        raise GranularityError(
            f"This run needs about {need / 2**30:.1f} GiB of memory but {limit / 2**30:.1f} GiB is available; "
            "lower seed_batch, train.n_train, data.d or data.P."
        )


def _sources(cfg: SimConfig) -> dict[str, int]:
    return {str(s): cfg.source_level(s) for s in cfg.transfer.sources}


def _load_partial(path: Path | None) -> dict:
    empty = {"done": {}, "current": None}
    if path is None or not path.exists():
        return empty
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - written atomically, so only a foreign file lands here
        return empty


def _save_partial(path: Path | None, state: dict) -> None:
    if path is not None:
        from granularity.utils.io import write_bytes_atomic

        write_bytes_atomic(path, lambda fh: torch.save(state, fh))


# With checkpoint_every=0 a seed batch's training state is saved at the first step after this
# many seconds since the last save (and after each finished source): what an interruption can
# cost stays bounded, and short runs do not spend their time writing checkpoints.
CHECKPOINT_SECONDS = 30.0


def run_seed_batch(cfg: SimConfig, seeds: list[int], device: torch.device,
                   progress: Callable[[int], None] | None = None,
                   partial: Path | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every source/protocol for a batch of seeds; one record per seed.

    With ``partial`` (a checkpoint file), the training state is saved every
    ``cfg.checkpoint_every`` steps (0: every :data:`CHECKPOINT_SECONDS`) and after each finished source, and a rerun continues from
    it with the same result as an uninterrupted run.
    """
    sb = SeedBatch.build(cfg, seeds, device)
    models, heads, curves, summaries = {}, {}, {}, {}
    target = cfg.transfer.target
    state = _load_partial(partial)
    every = cfg.checkpoint_every  # 0: by time (CHECKPOINT_SECONDS), not by step count
    for src, level in _sources(cfg).items():
        if src in state["done"]:
            done = state["done"][src]
            model = PatchCNN(len(seeds), cfg.data.nodes_per_level[level - 1], cfg.data.d, cfg.model,
                             [torch.Generator() for _ in seeds], device)
            model.W, model.a = done["W"].to(device), done["a"].to(device)
            pre = Pretrained(level, model, done["align_steps"], done["alignment"], done["curve"])
            for proto, h in done["heads"].items():
                heads[(src, proto)] = Head(**{k: (v.to(device) if v is not None else None) for k, v in h.items()})
            if progress is not None:
                progress(cfg.train.steps)
        else:
            cur = state["current"]
            resume = cur["state"] if cur is not None and cur["src"] == src else None

            def save_current(st: dict, src: str = src) -> None:
                state["current"] = {"src": src, "state": st}
                _save_partial(partial, state)

            pre = pretrain(cfg, sb, level, progress, checkpoint=save_current if partial else None,
                           every=every, resume=resume, every_s=CHECKPOINT_SECONDS)
            if "probe" in cfg.transfer.protocols:
                heads[(src, "probe")] = linear_probe(cfg, sb, pre, target)
            if "finetune" in cfg.transfer.protocols:
                heads[(src, "finetune")] = finetune(cfg, sb, pre, target)
            state["done"][src] = {
                "W": pre.model.W.cpu(), "a": pre.model.a.cpu(), "align_steps": pre.align_steps,
                "alignment": pre.alignment, "curve": pre.curve,
                "heads": {p: vars(heads[(s, p)]) for (s, p) in heads if s == src},
            }
            state["current"] = None
            _save_partial(partial, state)
        models[src] = pre
        summaries[src] = feature_summary(cfg, sb, pre)
        curves[src] = pre.curve
    errors = evaluate(cfg, sb, models, heads)
    tree = sb.dists[0].tree
    records = []
    for i, seed in enumerate(seeds):
        rec: dict[str, Any] = {"seed": seed, "config_hash": config_hash(cfg), "errors": {}, "alignment": {}, "curves": {}}
        for (src, proto), e in errors.items():
            rec["errors"].setdefault(src, {})[proto] = {"easy": float(e["easy"][i]), "hard": float(e["hard"][i])}
        for src, summ in summaries.items():
            rec["alignment"][src] = {
                "steps": models[src].align_steps.tolist(),
                **{k: v[i].tolist() for k, v in summ.items()},
            }
            rec["curves"][src] = [
                {"step": c["step"], "loss": c["loss"][i], "acc": c["acc"][i]} for c in curves[src]
            ]
        rec["_arrays"] = {
            src: {
                "steps": models[src].align_steps,
                "alignment": models[src].alignment[i],
                "feature_level": tree.feature_level().numpy(),
                "level": np.asarray(models[src].level),
            }
            for src in models
        }
        records.append(rec)
    return records


def _seed_path(out: Path, seed: int) -> Path:
    return out / "seeds" / f"seed_{seed}.json"


def load_finished(out: Path, cfg: SimConfig) -> dict[int, dict]:
    done = {}
    for seed in range(cfg.seed0, cfg.seed0 + cfg.seeds):
        path = _seed_path(out, seed)
        if path.exists():
            try:
                rec = read_json(path)
            except GranularityError:
                continue  # never happens with atomic writes; recompute if it does
            if rec.get("config_hash") == config_hash(cfg):
                done[seed] = rec
    return done


def aggregate(cfg: SimConfig, records: list[dict]) -> dict[str, Any]:
    """Mean and 95% CI over seeds of every error and final alignment figure."""
    table: dict[str, Any] = {}
    first = records[0]
    for src, protos in first["errors"].items():
        for proto in protos:
            for kind in ("easy", "hard"):
                vals = [r["errors"][src][proto][kind] for r in records]
                table.setdefault(src, {}).setdefault(proto, {})[kind] = {**mean_ci(vals), "values": vals}
    align: dict[str, Any] = {}
    for src, summ in first["alignment"].items():
        for key in summ:
            if key == "steps":
                continue
            vals = [r["alignment"][src][key][-1] for r in records]
            align.setdefault(src, {})[key] = {**mean_ci(vals), "values": vals}
    return {"errors": table, "alignment_final": align}


def check_run_folder(out: Path, cfg: SimConfig) -> None:
    cfg_path = out / "config.json"
    if cfg_path.exists():
        old = read_json(cfg_path)
        try:
            old_cfg = SimConfig.model_validate(old)
        except Exception:  # noqa: BLE001 - an older/foreign config: refuse, never overwrite
            old_cfg = None
        if old_cfg is None or config_hash(old_cfg) != config_hash(cfg):
            raise GranularityError(
                f"The output folder {str(out)!r} holds a run with a different config; "
                "choose another --out (nothing there was changed)."
            )


def resolve_precision(cfg: SimConfig, device: torch.device, log: Callable[[str], None] | None = None) -> SimConfig:
    """``cfg`` with the precision this run computes in: bfloat16 asked for on hardware without a
    fast bf16 path (no AVX512-BF16/AMX, no bf16 CUDA card) runs in float32, with a one-line note;
    the returned config (its hash, config.json, result.json) names what was computed."""
    if cfg.model.precision != "bfloat16" or bf16_fast(device):
        return cfg
    note = f"model.precision=bfloat16 has no fast path on this {device.type} (no AVX512-BF16/AMX); computing in float32"
    if log is not None:
        log(note)
    else:
        warnings.warn(note, stacklevel=3)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"precision": "float32"})})


def simulate(cfg: SimConfig, out: str | Path, progress: bool = True,
             log: Callable[[str], None] | None = None, figures: bool = True) -> dict[str, Any]:
    """Run (or resume) the experiment into ``out`` and return the result dict.

    ``figures=False`` skips the PNGs (sweeps of one-seed runs draw from the store instead);
    ``granularity.theory.plots.plot_simulation(out)`` draws them later from the stored files.
    """
    out = check_writable(out)
    device = resolve_device(cfg.device)
    cfg = resolve_precision(cfg, device, log)
    check_run_folder(out, cfg)
    check_memory(cfg)
    write_json(out / "config.json", cfg.to_dict())
    write_json(out / "env.json", environment(str(device)))
    seeds = list(range(cfg.seed0, cfg.seed0 + cfg.seeds))
    done = load_finished(out, cfg)
    todo = [s for s in seeds if s not in done]
    steps_per_seed_batch = cfg.train.steps * len(cfg.transfer.sources)
    t0 = time.perf_counter()
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        n_batches = -(-len(todo) // cfg.seed_batch)
        bar = tqdm(total=n_batches * steps_per_seed_batch, desc=f"simulate {cfg.name}", unit="step", leave=False)
    if log and done:
        log(f"resuming: {len(done)} of {len(seeds)} seeds already finished in {out}")
    try:
        for i in range(0, len(todo), cfg.seed_batch):
            batch = todo[i : i + cfg.seed_batch]
            if bar is not None:
                bar.set_postfix_str(f"seeds {batch[0]}-{batch[-1]}")
            tb = time.perf_counter()
            try:
                partial = out / "partial" / f"{config_hash(cfg)}_seeds{batch[0]}-{batch[-1]}.pt"
                records_batch = run_seed_batch(cfg, batch, device, bar.update if bar is not None else None, partial)
            except FloatingPointError as exc:
                # a diverged run stops with its reason recorded; finished seeds stay saved
                write_json(out / "failed.json", {"seeds": batch, "error": str(exc), "config_hash": config_hash(cfg)})
                # a failure at run time (exit 1, like transfer), not bad input (exit 2)
                raise RunFailedError(f"run stopped for seeds {batch[0]}-{batch[-1]}: {exc} (recorded in {out / 'failed.json'})") from None
            for rec in records_batch:
                arrays = rec.pop("_arrays")
                rec["seconds"] = (time.perf_counter() - tb) / len(batch)
                for src, arr in arrays.items():
                    write_npz(out / "alignment" / f"seed_{rec['seed']}_{src}.npz", **arr)
                write_json(_seed_path(out, rec["seed"]), rec)  # written last: marks the seed done
                done[rec["seed"]] = rec
            partial.unlink(missing_ok=True)  # every seed of the batch is saved
    finally:
        if bar is not None:
            bar.close()
    records = [done[s] for s in seeds]
    result = {
        "name": cfg.name,
        "config_hash": config_hash(cfg),
        "precision": cfg.model.precision,
        "seeds": seeds,
        "seconds_this_call": time.perf_counter() - t0,
        "seconds_total": float(sum(r.get("seconds", 0.0) for r in records)),
        **aggregate(cfg, records),
    }
    lines = []
    for r in records:
        for src, curve in r["curves"].items():
            lines.extend({"seed": r["seed"], "source": src, **c} for c in curve)
    from granularity.utils.io import write_bytes_atomic

    write_bytes_atomic(out / "metrics.jsonl", lambda fh: fh.write("".join(json.dumps(x) + "\n" for x in lines).encode()))
    write_json(out / "result.json", result)
    if figures:
        from granularity.theory.plots import plot_simulation

        plot_simulation(out)
    return result


def load_result(out: str | Path) -> dict[str, Any]:
    return read_json(Path(out) / "result.json")


def is_run_folder(path: str | Path) -> bool:
    """A finished ``simulate`` folder: a result.json with per-source errors and its seeds."""
    path = Path(path) / "result.json"
    if not path.exists():
        return False
    res = read_json(path)
    return isinstance(res, dict) and "errors" in res and "seeds" in res


def load_records(out: str | Path, seeds: list[int]) -> list[dict[str, Any]]:
    """The per-seed records (training curves, alignment) of ``seeds`` that the folder holds."""
    return [read_json(p) for s in seeds if (p := _seed_path(Path(out), s)).exists()]


def summarise_run(out: str | Path) -> dict[str, Any]:
    """What a report shows of a ``simulate`` folder: ``{"result", "config", "records"}`` (config
    None when absent; records: the per-seed files present)."""
    out = Path(out)
    result = load_result(out)
    config = read_json(out / "config.json") if (out / "config.json").exists() else None
    return {"result": result, "config": config, "records": load_records(out, result.get("seeds", []))}


def format_table(result: dict[str, Any]) -> str:
    """A readable table: error on easy / hard target test samples per source and protocol."""
    from granularity.utils.stats import fmt_ci

    rows = [("pretraining", "protocol", "easy error", "hard error")]
    order = ["map", "probe", "finetune"]
    for src, protos in result["errors"].items():
        for proto in sorted(protos, key=lambda p: order.index(p) if p in order else 99):
            e = protos[proto]
            rows.append((src, proto, fmt_ci(e["easy"]), fmt_ci(e["hard"])))
    al = result.get("alignment_final", {})
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if al:
        lines.append("")
        lines.append("max <w, v> at the end (mean over features; common = level 1, fine = leaves):")
        for src, summ in al.items():
            parts = [f"level {lvl}: {fmt_ci(summ[k])}" for lvl, k in level_keys(summ)]
            lines.append(f"  {src:>8}: " + ", ".join(parts))
    n = len(result.get("seeds", []))
    lines.append(f"({n} seeds, mean ± 95% CI; {result.get('seconds_total', 0):.0f} s of training)")
    return "\n".join(lines)

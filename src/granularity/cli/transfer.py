"""``granularity transfer`` (one pretrain -> transfer run) and ``granularity study``."""

from __future__ import annotations

from pathlib import Path

import click

from granularity.cli.options import apply_options


def _resolve(model_cls, config: Path | None, flags: dict, sets: tuple[str, ...]):
    """defaults < file < flags < --set, validated once with one-line errors."""
    from granularity.utils.config import apply_overrides, deep_merge, load_config_file

    raw: dict = {}
    if config is not None:
        raw = load_config_file(config)
    raw = deep_merge(raw, {k: v for k, v in flags.items() if v is not None})
    raw = apply_overrides(raw, sets)
    return model_cls.build(raw)


def _nested(**flat):
    """{"pretrain.epochs": 3} -> {"pretrain": {"epochs": 3}} (None values dropped)."""
    out: dict = {}
    for key, value in flat.items():
        if value is None:
            continue
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


_config_opts = [
    click.option("--config", type=click.Path(path_type=Path), default=None, help="YAML/JSON config file."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Override any config field, e.g. --set pretrain.lr=0.1 --set model.options.width=16."),
    click.option("--data-root", default=None, help="Folder with the data files (default: standard places)."),
    click.option("--model", default=None, help="Model name: cnn (default), resnet18, mlp, vit."),
    click.option("--epochs", type=click.IntRange(0), default=None, help="Pretraining epochs."),
    click.option("--transfer-epochs", type=click.IntRange(0), default=None, help="Transfer epochs."),
    click.option("--mode", type=click.Choice(["finetune", "linear", "map"]), default=None, help="Transfer mode."),
    click.option("--train-size", type=click.IntRange(1), default=None, help="Training images (stratified subset)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
                 help="auto = CUDA when available; cuda without a GPU is an error."),
]




@click.command()
@click.option("--dataset", default=None, help="Data set name (default fashion-mnist).")
@click.option("--source", default=None, help="Pretraining labels: target, leaf, level:L, kmeans-within:K, kmeans-global:K, random:K, per-sample.")
@click.option("--target", type=click.IntRange(1), default=None, help="Hierarchy level of the target task (default 2).")
@click.option("--seed", type=int, default=None)
@apply_options(_config_opts)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default runs/transfer/<source>-seed<seed>); rerunning resumes it.")
@click.option("--bf16/--no-bf16", default=None, help="bfloat16 autocast in training and evaluation (CUDA only; ignored on the CPU).")
@click.option("--tf32/--no-tf32", default=None, help="TF32 matmuls and convolutions (CUDA only).")
@click.option("--dry-run", is_flag=True,
              help="Validate the config, data set, label function, target level and memory estimate; print the resolved config; train nothing.")
def transfer(dataset, source, target, seed, config, sets, data_root, model, epochs, transfer_epochs, mode, train_size, device, out,
             bf16, tf32, dry_run):
    """Pretrain on one label function of a real data set, then transfer to the target level.

    Data-parallel on several processes or GPUs when started by torchrun, e.g.
    ``torchrun --nproc_per_node=4 -m granularity transfer ...`` (see docs/distributed.md).
    """
    import os

    from granularity.engine import TransferConfig, run_transfer

    flags = _nested(dataset=dataset, source=source, target=target, seed=seed, data_root=data_root,
                    **{"model.name": model, "pretrain.epochs": epochs, "transfer.epochs": transfer_epochs,
                       "transfer.mode": mode}, train_size=train_size, device=device, bf16=bf16, tf32=tf32)
    cfg = _resolve(TransferConfig, config, flags, sets)
    if dry_run:
        from granularity.engine.run import plan_transfer

        _print_plan(plan_transfer(cfg))
        return
    out = out or Path("runs/transfer") / f"{cfg.source.replace(':', '')}-seed{cfg.seed}"
    r = run_transfer(cfg, out, progress=True)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    click.echo(
        f"{cfg.source} -> level {cfg.target} ({r['transfer_mode']}): target error {r['target_error']:.4f}"
        + (f", rare {r['rare_error']:.4f} / other {r['common_error']:.4f}" if "rare_error" in r else "")
        + f"  [{out}]"
    )


def _print_plan(plan: dict) -> None:
    import json

    click.echo(json.dumps(plan["config"], indent=2, sort_keys=True))
    limit = plan["memory_limit_bytes"]
    click.echo(f"{plan['n_train']} training / {plan['n_test']} test inputs of shape {tuple(plan['input_shape'])}; "
               f"{plan['num_source_classes']} source -> {plan['num_target_classes']} target classes; device {plan['device']}")
    click.echo(f"memory estimate: {plan['memory_estimate_bytes'] / 2**20:.1f} MiB"
               + (f" (available {limit / 2**20:.0f} MiB)" if limit else ""))


def _seeds(text: str | None):
    if text is None:
        return None
    try:
        if text.isdigit():
            return list(range(int(text)))
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"must be a count (5) or a comma-separated list (0,1,2). Got {text!r} instead.", param_hint="'--seeds'") from None


@click.command()
@click.argument("dataset", default="fashion-mnist")
@click.option("--seeds", default=None, help="Number of seeds (5) or a list (0,1,2); default 3.")
@click.option("--quick", is_flag=True, help="Tiny sizes (seconds): a smoke test, not a result.")
@click.option("--full", is_flag=True, help="Whole data set and 5 seeds (hours on 2 CPU cores; minutes on a GPU).")
@apply_options(_config_opts)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Study folder (default runs/study/<dataset>[-quick]); rerunning skips finished runs.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--dry-run", is_flag=True, help="Validate the study and every run it would start (data set, label functions, memory); train nothing.")
def study(dataset, seeds, quick, full, config, sets, data_root, model, epochs, transfer_epochs, mode, train_size, device, out, quiet,
          dry_run):
    """The paper's granularity study: target error after pretraining on each label function,
    overall, on hard test samples and on rare subclasses (mean and 95% CI over seeds).

    ``granularity study wordnet-glosses`` runs the WordNet-gloss study instead (text data,
    every WordNet level as a pretraining granularity; see docs/wordnet-glosses.md)."""
    if dataset == "wordnet-glosses":  # dispatch to its own study (granularity.cli.glosses)
        from granularity.cli.glosses import glosses_study

        return glosses_study(**click.get_current_context().params)
    from granularity.experiments import QUICK, StudyConfig, run_study
    from granularity.utils.config import deep_merge
    from granularity.utils.stats import fmt_ci

    if quick and full:
        raise click.UsageError("--quick and --full cannot be used together.")
    base: dict = {"dataset": dataset}
    if quick:
        base = deep_merge(base, QUICK)
    if full:
        base.update({"train_size": None, "test_size": None, "seeds": [0, 1, 2, 3, 4]})
    flags = deep_merge(base, _nested(seeds=_seeds(seeds), data_root=data_root, train_size=train_size, device=device,
                                     **{"model.name": model, "pretrain.epochs": epochs,
                                        "transfer.epochs": transfer_epochs, "transfer.mode": mode}))
    cfg = _resolve(StudyConfig, config, flags, sets)
    if dry_run:
        import json

        from granularity.experiments.study import plan_study

        plan = plan_study(cfg)
        click.echo(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        click.echo(f"{len(plan['runs'])} runs ({len(plan['arms'])} arms x {len(cfg.seeds)} seeds + {cfg.reference_seeds} references); "
                   f"largest memory estimate: {plan['memory_estimate_bytes'] / 2**20:.1f} MiB")
        return
    out = out or Path("runs/study") / (dataset + ("-quick" if quick else "-full" if full else ""))
    res = run_study(cfg, out, progress=not quiet)
    keys = [k for k in ("target_error", "hard_error", "easy_error", "rare_error") if any(k in r for r in res["table"])]
    click.echo(f"{'arm':<20} {'classes':>7}  " + "  ".join(f"{k:<16}" for k in keys))
    for r in res["table"]:
        cells = "  ".join(f"{fmt_ci(r[k]) if k in r else '-':<16}" for k in keys)
        click.echo(f"{r['arm']:<20} {r['num_source_classes']:>7}  {cells}")
    click.echo(f"hard samples: {res['hard_samples']['n']} ({res['hard_samples']['rule']}); "
               f"{res['seconds']:.0f} s; results in {out}/results.json, figures {', '.join(res['figures'])}")

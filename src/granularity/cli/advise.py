"""``granularity advise``: at which granularity should I pretrain, on my data, within a budget?"""

from __future__ import annotations

from pathlib import Path

import click

from granularity.cli.options import apply_options, fuse_options, parse_size
from granularity.cli.transfer import _config_opts, _data_options, _nested, _resolve


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


@click.command()
@click.option("--dataset", default=None, help="Data set name (default fashion-mnist); any registered data set.")
@click.option("--target", type=click.IntRange(1), default=None, help="Hierarchy level of your task (default 2).")
@apply_options(_config_opts)
@click.option("--candidates", default=None, metavar="LIST",
              help="Replace the automatic candidates, e.g. target,level:3,kmeans-within:40 (comma-separated).")
@click.option("--add", "add_", default=None, metavar="LIST", help="Add candidates, e.g. kmeans-global:40.")
@click.option("--remove", default=None, metavar="LIST", help="Remove automatic candidates, e.g. random:10.")
@click.option("--max-runs", type=click.IntRange(1), default=None, help="Budget: runs in total (default 40); a later call may raise it.")
@click.option("--max-minutes", type=click.FloatRange(0, min_open=True), default=None, help="Budget: wall minutes of this call.")
@click.option("--min-seeds", type=click.IntRange(2), default=None, help="Seeds every candidate gets before elimination (default 3).")
@click.option("--max-seeds", type=click.IntRange(2), default=None, help="Seeds at most per candidate (default 10).")
@click.option("--confirm-seeds", type=click.IntRange(2), default=None,
              help="Fresh seeds on which the winner and the target are retrained for the confirmation (default 5).")
@click.option("--metric", type=click.Choice(["error", "hard", "easy"]), default=None,
              help="Select on and report: error (default), hard (cue-free images) or easy (cued images); "
                   "hard/easy need data that defines them, e.g. --data-option cue.rho=1 --data-option cue.level=2.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", help="Where runs execute.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Runs at a time (default: one per core).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Torch threads per run.")
@apply_options(fuse_options)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/advise"), show_default=True,
              help="Advice folder; rerunning (with a larger budget) continues the same race.")
@click.option("--dry-run", is_flag=True, help="Validate; print the candidates, the rule and the budget; train nothing.")
def advise(dataset, target, config, sets, data_root, data_options, model, epochs, transfer_epochs, protocol, train_size, device,
           candidates, add_, remove, max_runs, max_minutes, min_seeds, max_seeds, confirm_seeds, metric, executor, workers, threads,
           fuse, fuse_memory, out, dry_run):
    """Race pretraining label granularities on your data and recommend one, with the evidence.

    Candidates: the target labels (baseline), every hierarchy level below the target, k-means
    inside target classes, random labels (a negative control). Seeds are paired; candidates
    significantly worse than another on a validation split are dropped (Holm over candidates,
    alpha spent over the looks); the winner and the target are retrained on fresh seeds and
    compared once on the test split. --config takes an advise file (keys: run, candidates, add, remove, min_seeds, ...);
    --set edits it, e.g. --set run.pretrain.lr=0.1 --set alpha=0.1.
    """
    fuse_bytes = parse_size(fuse_memory)
    from granularity.experiments.advise import AdviseConfig, decision_rule, run_advice

    run = _nested(dataset=dataset, target=target, data_root=data_root, data_options=_data_options(data_options),
                  train_size=train_size, device=device,
                  **{"model.name": model, "pretrain.epochs": epochs, "transfer.epochs": transfer_epochs,
                     "transfer.protocol": protocol})
    flags = {"run": run, "candidates": _names(candidates), "add": _names(add_), "remove": _names(remove),
             "max_runs": max_runs, "max_minutes": max_minutes, "min_seeds": min_seeds, "max_seeds": max_seeds,
             "confirm_seeds": confirm_seeds, "metric": metric}
    cfg = _resolve(AdviseConfig, config, flags, sets)
    if dry_run:
        import json

        from granularity.experiments.advise import _base_run, candidate_list

        base, hierarchy, tgt = _base_run(cfg)
        click.echo(json.dumps({"base_run": base, "candidates": candidate_list(cfg, hierarchy, tgt),
                               "metric": cfg.metric, "confirm_seeds": cfg.confirm_seeds, "max_runs": cfg.max_runs, "max_minutes": cfg.max_minutes}, indent=2))
        click.echo(decision_rule(cfg))
        return
    advice = run_advice(cfg, out, executor=executor, workers=workers, threads=threads, log=click.echo, fuse=fuse,
                        fuse_memory=fuse_bytes)
    click.echo(f"advice: {out / 'advice.md'}, page {out / 'index.html'}")
    if not advice["finished"]:
        click.echo(f"not finished: {advice['stopped_because']}")

"""``granularity study``: run a registered study design (:mod:`granularity.experiments.registry`)
with the one runner (:mod:`granularity.experiments.runner`), or redraw a finished study's figures."""

from __future__ import annotations

from pathlib import Path

import click

from granularity.cli.options import apply_options, fuse_options, parse_size, seed_list, seeds_options
from granularity.cli.transfer import _config_opts, _data_options, _raw
from granularity.experiments.registry import REGISTRY

STUDY_OPTIONS = {"groupings": "--grouping", "data_options": "--data-option", "seeds": "--seeds/--seed"}  # else --name


@click.command()
@click.option("--design", type=click.Choice(list(REGISTRY)), default=None,
              help="The study design (default levels; wordnet-glosses for --dataset wordnet-glosses): "
                   + "; ".join(f"{d.name}: {d.help}" for d in REGISTRY.values()) + ".")
@click.option("--dataset", default=None, help="Data set name (default fashion-mnist).")
@click.option("--grouping", "groupings", multiple=True, metavar="SPEC",
              help="Target grouping(s) of a paired design (repeatable): natural4, natural2, confusable, random, random:G, "
                   "a JSON/YAML file {group: [leaves]} or a list 'a,b;c,d' (groups split by ';', members by ',', names or ids).")
@apply_options(seeds_options)
@click.option("--quick", is_flag=True, help="Tiny sizes (seconds): a smoke test, not a result.")
@click.option("--full", is_flag=True, help="levels: whole data set and 5 seeds; paired designs: 10 paired seeds; "
                                           "wordnet-glosses: every training gloss.")
@apply_options(_config_opts)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Study folder (default runs/study/<dataset>[-<design>][-quick]); rerunning skips finished runs.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--shard", default=None, metavar="I/N",
              help="Run every N-th group of runs from I (a paired design's group: one cell and seed), so N processes "
                   "share one --out; the last to finish (or a plain rerun) writes the results.")
@click.option("--dry-run", is_flag=True, help="Validate the study and every run it would start (data set, label functions, memory); train nothing.")
@click.option("--plot-only", is_flag=True, help="Redraw the figures of the finished study in --out from its results.json; run nothing, rewrite no result file.")
@apply_options(fuse_options)
def study(design, dataset, groupings, seeds, one_seed, quick, full, config, sets, data_root, data_options, model, epochs,
          transfer_epochs, protocol, train_size, device, out, quiet, shard, dry_run, plot_only, fuse, fuse_memory):
    """The paper's granularity study on real data, as one of the registered designs: target
    error after pretraining on each label function (levels), designs that pair target and leaf
    (fine) pretraining by seed and report where fine labels help (bridge, bridge-phase,
    groupings, fewshot), or the WordNet-gloss study on text (wordnet-glosses; see
    docs/wordnet-glosses.md)."""
    import sys

    from granularity.experiments.registry import default_design, get_design
    from granularity.experiments.runner import run_design

    if plot_only:
        return _replot(out)
    d = get_design(design or default_design(dataset))
    given = {"dataset": dataset, "seeds": seed_list(seeds, one_seed), "groupings": list(groupings) or None,
             "data_root": data_root, "data_options": _data_options(data_options), "model": model, "epochs": epochs,
             "transfer_epochs": transfer_epochs, "protocol": protocol, "train_size": train_size, "device": device}
    given = {k: v for k, v in given.items() if v is not None}
    _check_options(d, given)
    if quick and full:
        raise click.UsageError("--quick and --full cannot be used together.")
    preset = "quick" if quick else "full" if full else None
    cfg = d.config(_raw(config, d.overrides(given), sets, d.presets.get(preset)))
    if dry_run:
        import json

        click.echo(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        click.echo(d.dry_run(cfg))
        return
    data = d.data_name(cfg)
    out = out or Path("runs/study") / (data + ("" if d.name == default_design(data) else f"-{d.name}")
                                       + (f"-{preset}" if preset else ""))
    res = run_design(d, cfg, out, progress=not quiet, shard=_shard(shard), simulate=not quick,
                     command="granularity " + " ".join(sys.argv[1:]), fuse=fuse, fuse_memory=parse_size(fuse_memory))
    if res is None:
        click.echo(f"shard {shard} finished; other shards still running (a rerun without --shard writes the results)")
        return
    click.echo(d.describe(res, out))


def _check_options(d, given: dict) -> None:
    """A data set the design does not run on, and options it does not take: usage errors (a
    design made for its data sets takes ``--dataset`` naming one of them, and drops it)."""
    if d.datasets and given.get("dataset", d.datasets[0]) not in d.datasets:
        raise click.UsageError(f"The design {d.name} runs on the data set {' or '.join(d.datasets)}, "
                               f"not on {given['dataset']!r}.")
    for key in [k for k in given if k not in d.flags]:
        if key == "dataset" and d.datasets:
            del given[key]
            continue
        takers = [n for n, other in REGISTRY.items() if key in other.flags]
        raise click.UsageError(f"{STUDY_OPTIONS.get(key, '--' + key.replace('_', '-'))} applies to the designs "
                               f"{', '.join(takers)}, not to {d.name}.")


def _replot(out: Path | None) -> None:
    """``study --plot-only``: the study's figures again from its results.json, nothing run."""
    if out is None:
        raise click.UsageError("--plot-only needs --out, the folder of a finished study.")
    from granularity.experiments.registry import replot

    files = replot(out)
    click.echo(f"figures {', '.join(files)} (+ .pdf, .svg) redrawn in {out} from its results.json")


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise click.BadParameter(f"must be I/N, e.g. 0/3. Got {text!r} instead.", param_hint="'--shard'") from None
    if not 0 <= i < n:
        raise click.BadParameter(f"must be I/N with 0 <= I < N. Got {text!r} instead.", param_hint="'--shard'")
    return i, n

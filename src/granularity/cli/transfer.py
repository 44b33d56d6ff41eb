"""``granularity transfer`` (one pretrain -> transfer run) and ``granularity study``."""

from __future__ import annotations

from pathlib import Path

import click

from granularity.cli.options import PROTOCOLS, HiddenArgument, apply_options, renamed_option, seed_list, seeds_options


def _resolve(model_cls, config: Path | None, flags: dict, sets: tuple[str, ...]):
    """defaults < file < flags < --set, validated once with one-line errors; old spellings in
    the file and in --set (the config class's RENAMES) are read in the new one, layer by layer,
    so that a flag in the new spelling overrides a file in the old one."""
    from granularity.utils.config import apply_overrides, deep_merge, load_config_file
    from granularity.utils.deprecation import upgrade, upgrade_overrides

    renames = getattr(model_cls, "RENAMES", ())
    raw: dict = {}
    if config is not None:
        raw = upgrade(load_config_file(config), renames)
    raw = deep_merge(raw, {k: v for k, v in flags.items() if v is not None})
    raw = apply_overrides(raw, upgrade_overrides(sets, renames))
    return model_cls.build(raw)


def _nested(**flat):
    """{"pretrain.epochs": 3} -> {"pretrain": {"epochs": 3}} (flags not given, None, dropped)."""
    from granularity.utils.config import undot

    return undot({k: v for k, v in flat.items() if v is not None})


def _data_options(items: tuple[str, ...]) -> dict | None:
    """``("label_columns=genus,species", "image_size=64")`` -> ``{"label_columns": ["genus",
    "species"], "image_size": 64}``: values through the shared YAML 1.2 value parser, a value
    with commas (not a bracketed list) split into a list; a dotted key is a nested option
    (``cue.rho=0.9`` -> ``{"cue": {"rho": 0.9}}``). ``None`` when no option was given."""
    from granularity.utils.config import parse_value

    if not items:
        return None
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"must be KEY=VALUE, e.g. label_columns=genus,species. Got {item!r} instead.",
                                     param_hint="'--data-option'")
        if "," in text and not text.lstrip().startswith(("[", "{", '"', "'")):
            value = [parse_value(t.strip()) for t in text.split(",")]
        else:
            value = parse_value(text)
        *parents, last = key.strip().split(".")  # cue.rho=0.9 -> {"cue": {"rho": 0.9}}
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise click.BadParameter(f"{p!r} is given both as a value and as a mapping ({item!r}).",
                                         param_hint="'--data-option'")
        node[last] = value
    return out


# the transfer protocol's spelling before the one vocabulary: --mode, with 'linear' for probe
old_mode_option = renamed_option("--mode", "--protocol", "protocol", {"linear": "probe"},
                                 type=click.Choice(["finetune", "linear", "map"]))

_config_opts = [
    click.option("--config", type=click.Path(path_type=Path), default=None, help="YAML/JSON config file."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Override any config field, e.g. --set pretrain.lr=0.1 --set model.options.width=16."),
    click.option("--data-root", default=None, help="Folder with the data files (default: standard places)."),
    click.option("--data-option", "data_options", multiple=True, metavar="KEY=VALUE",
                 help="A loader option of the data set (repeatable; lists comma-separated), e.g. "
                      "--data-option label_columns=genus,species_id --data-option image_size=64; see docs/data-options.md."),
    click.option("--model", default=None, help="Model name: cnn (default), resnet18, mlp, vit."),
    click.option("--epochs", type=click.IntRange(0), default=None, help="Pretraining epochs."),
    click.option("--transfer-epochs", type=click.IntRange(0), default=None, help="Transfer epochs."),
    click.option("--protocol", type=click.Choice(PROTOCOLS), default=None,
                 help="How the pretrained model meets the target task: finetune (default; fresh head, all weights), "
                      "probe (fresh head on frozen features) or map (source classes summed into target classes)."),
    click.option("--train-size", type=click.IntRange(1), default=None, help="Training images (stratified subset)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None,
                 help="auto = CUDA when available; cuda without a GPU is an error."),
]




@click.command()
@click.option("--dataset", default=None, help="Data set name (default fashion-mnist).")
@click.option("--source", default=None, help="Pretraining labels: target, leaf, level:L, kmeans-within:K, kmeans-global:K, random:K, per-sample.")
@click.option("--target", type=click.IntRange(1), default=None, help="Hierarchy level of the target task (default 2).")
@click.option("--seed", type=int, default=None)
@apply_options(_config_opts)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default runs/transfer/<source>-seed<seed>); rerunning resumes it.")
@click.option("--bf16/--no-bf16", default=None, help="bfloat16 autocast + channels-last in training and evaluation (default auto: where the hardware has fast bf16, CUDA or AVX512-BF16/AMX CPUs; --no-bf16: float32).")
@click.option("--tf32/--no-tf32", default=None, help="TF32 matmuls and convolutions (CUDA only).")
@click.option("--dry-run", is_flag=True,
              help="Validate the config, data set, label function, target level and memory estimate; print the resolved config; train nothing.")
@click.option("--track", default=None, metavar="BACKENDS",
              help="Log the run live to tensorboard, mlflow or both (comma-separated; extras 'tensorboard'/'mlflow').")
@click.option("--track-dir", type=click.Path(path_type=Path), default=None, help="Where tracking writes (default <out>/tracking).")
@old_mode_option
def transfer(dataset, source, target, seed, config, sets, data_root, data_options, model, epochs, transfer_epochs, protocol, train_size,
             device, out, bf16, tf32, dry_run, track, track_dir):
    """Pretrain on one label function of a real data set, then transfer to the target level.

    Data-parallel on several processes or GPUs when started by torchrun, e.g.
    ``torchrun --nproc_per_node=4 -m granularity transfer ...`` (see docs/distributed.md).
    """
    import os

    from granularity.engine import TransferConfig, run_transfer

    flags = _nested(dataset=dataset, source=source, target=target, seed=seed, data_root=data_root,
                    data_options=_data_options(data_options),
                    **{"model.name": model, "pretrain.epochs": epochs, "transfer.epochs": transfer_epochs,
                       "transfer.protocol": protocol}, train_size=train_size, device=device, bf16=bf16, tf32=tf32)
    cfg = _resolve(TransferConfig, config, flags, sets)
    if dry_run:
        from granularity.engine.run import plan_transfer

        _print_plan(plan_transfer(cfg))
        return
    out = out or Path("runs/transfer") / f"{cfg.source.replace(':', '')}-seed{cfg.seed}"
    if track:
        from granularity.tracking import parse_backends

        track = parse_backends(track)  # one-line error for an unknown backend, before any work
    r = run_transfer(cfg, out, progress=True, track=track, track_dir=track_dir)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    click.echo(
        f"{cfg.source} -> level {cfg.target} ({cfg.transfer.protocol}): target error {r['target_error']:.4f}"
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


DESIGN_NAMES = ("levels", "bridge", "bridge-phase", "groupings", "fewshot")


@click.command()
@click.argument("dataset_arg", required=False, default=None, cls=HiddenArgument)  # old spelling of --dataset
@click.option("--dataset", default=None, help="Data set name (default fashion-mnist); wordnet-glosses runs the text study.")
@click.option("--design", type=click.Choice(DESIGN_NAMES), default="levels", show_default=True,
              help="levels: every label function of the hierarchy (the original study); bridge: a planted cue per coarse class, "
                   "easy (cued) vs hard (cue-free) test images; bridge-phase: the bridge over a rho x cue-strength grid; "
                   "groupings: natural4 / natural2 / random / confusable targets; fewshot: 10 / 100 / 1000 transfer images per class.")
@click.option("--grouping", "groupings", multiple=True, metavar="SPEC",
              help="Target grouping(s) of a design (repeatable): natural4, natural2, confusable, random, random:G, a JSON/YAML "
                   "file {group: [leaves]} or a list 'a,b;c,d' (groups split by ';', members by ',', names or ids).")
@apply_options(seeds_options)
@click.option("--quick", is_flag=True, help="Tiny sizes (seconds): a smoke test, not a result.")
@click.option("--full", is_flag=True, help="levels: whole data set and 5 seeds; other designs: 10 paired seeds.")
@apply_options(_config_opts)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Study folder (default runs/study/<dataset>[-<design>][-quick]); rerunning skips finished runs.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--shard", default=None, metavar="I/N",
              help="Designs only: run every N-th (cell, seed) job from I, so N processes share one --out; "
                   "the last to finish (or a plain rerun) writes the report.")
@click.option("--dry-run", is_flag=True, help="Validate the study and every run it would start (data set, label functions, memory); train nothing.")
@click.option("--plot-only", is_flag=True, help="Redraw the figures of the finished study in --out from its results.json; run nothing, rewrite no result file.")
@old_mode_option
def study(dataset_arg, dataset, design, groupings, seeds, one_seed, quick, full, config, sets, data_root, data_options, model, epochs,
          transfer_epochs, protocol, train_size, device, out, quiet, shard, dry_run, plot_only):
    """The paper's granularity study on real data: target error after pretraining on each label
    function (--design levels), or a design that pairs target and leaf (fine) pretraining by seed
    and reports where fine labels help (bridge, bridge-phase, groupings, fewshot).

    ``granularity study --dataset wordnet-glosses`` runs the WordNet-gloss study instead (text data,
    every WordNet level as a pretraining granularity; see docs/wordnet-glosses.md)."""
    if plot_only:
        return _replot(out)
    dataset = _dataset(dataset_arg, dataset)
    seed_values = seed_list(seeds, one_seed)
    if dataset == "wordnet-glosses":  # its own study (granularity.cli.glosses; docs/wordnet-glosses.md)
        from granularity.cli.glosses import glosses_study

        params = {**click.get_current_context().params, "dataset": dataset, "seeds": seed_values, "protocol": protocol}
        return glosses_study(**params)
    if quick and full:
        raise click.UsageError("--quick and --full cannot be used together.")
    if design != "levels":
        if data_options:
            raise click.UsageError("--data-option applies to the design levels (the designs use Fashion-MNIST as they are).")
        return _study_design(dataset or "fashion-mnist", design, groupings, seed_values, quick, full, config, sets, data_root,
                             model, epochs, transfer_epochs, protocol, train_size, device, out, quiet, dry_run, _shard(shard))
    if shard:
        raise click.UsageError("--shard applies to the designs bridge, bridge-phase, groupings and fewshot, not to levels.")
    if groupings:
        raise click.UsageError("--grouping applies to the designs bridge, bridge-phase, groupings and fewshot, not to levels.")
    from granularity.experiments.study import StudyConfig, format_table, run_study, study_preset
    from granularity.utils.config import deep_merge

    run = _nested(dataset=dataset, data_root=data_root, data_options=_data_options(data_options), train_size=train_size,
                  device=device, **{"model.name": model, "pretrain.epochs": epochs, "transfer.epochs": transfer_epochs,
                                    "transfer.protocol": protocol})
    cfg = _resolve(StudyConfig, config, deep_merge(study_preset(quick, full), _nested(seeds=seed_values, run=run or None)), sets)
    if dry_run:
        import json

        from granularity.experiments.study import plan_study

        plan = plan_study(cfg)
        click.echo(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        click.echo(f"{len(plan['runs'])} runs ({len(plan['arms'])} arms x {len(cfg.seeds)} seeds + {sum(r.startswith('refs/') for r in plan['runs'])} references); "
                   f"largest memory estimate: {plan['memory_estimate_bytes'] / 2**20:.1f} MiB")
        return
    out = out or Path("runs/study") / (cfg.run.dataset + ("-quick" if quick else "-full" if full else ""))
    res = run_study(cfg, out, progress=not quiet)
    click.echo(format_table(res))
    click.echo(f"hard samples: {res['hard_samples']['n']} ({res['hard_samples']['rule']}); "
               f"{res['seconds']:.0f} s; results in {out}/results.json, figures {', '.join(res['figures'])}")


def _replot(out: Path | None) -> None:
    """``study --plot-only``: the study's figures again from its results.json, nothing run."""
    if out is None:
        raise click.UsageError("--plot-only needs --out, the folder of a finished study.")
    from granularity.experiments.replot import replot

    files = replot(out)
    click.echo(f"figures {', '.join(files)} (+ .pdf, .svg) redrawn in {out} from its results.json")


def _dataset(positional: str | None, option: str | None) -> str | None:
    """``study DATASET`` (the spelling before ``--dataset``) still works, with one deprecation line."""
    if positional is None:
        return option
    if option is not None:
        raise click.UsageError(f"The data set is given twice ({positional!r} and --dataset {option!r}); use --dataset only.")
    from granularity.utils.deprecation import warn_renamed

    warn_renamed(f"'granularity study {positional}'", f"'granularity study --dataset {positional}'")
    return positional


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


def _study_design(dataset, design, groupings, seeds, quick, full, config, sets, data_root, model, epochs, transfer_epochs, protocol,
                  train_size, device, out, quiet, dry_run, shard=None):
    """``study --design <name>``: defaults of the design < file < flags < --set."""
    from granularity.experiments.design_report import DESIGN_MODES, format_design_table
    from granularity.experiments.designs import design_config, run_design
    from granularity.utils.config import apply_overrides, deep_merge, load_config_file

    mode = DESIGN_MODES[protocol] if protocol else None
    raw: dict = load_config_file(config) if config is not None else {}
    flags = _nested(dataset=dataset, seeds=seeds or (list(range(10)) if full else None), data_root=data_root,
                    pretrain_size=train_size, device=device, groupings=list(groupings) or None,
                    modes=[mode] if mode else None,
                    **{"model.name": model, "pretrain.epochs": epochs, "transfer.epochs": transfer_epochs})
    if mode:
        flags["primary"] = {"mode": mode}
    if groupings:
        flags.setdefault("primary", {})["cell"] = None
    raw = apply_overrides(deep_merge(raw, flags), sets)
    cfg = design_config(design, raw, quick=quick)
    if dry_run:
        import json

        from granularity.experiments.designs import cells, transfers

        click.echo(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        n = len(cells(cfg)) * len(cfg.seeds) * 2
        click.echo(f"{n} pretraining runs ({len(cells(cfg))} cells x {len(cfg.seeds)} seeds x 2 arms), "
                   f"{n * len(transfers(cfg))} transfers")
        return
    out = out or Path("runs/study") / f"{dataset}-{design}{'-quick' if quick else '-full' if full else ''}"
    res = run_design(cfg, out, progress=not quiet, shard=shard, simulator=not quick)
    if res is None:
        click.echo(f"shard {shard[0]}/{shard[1]} finished; other shards still running (a rerun without --shard writes the report)")
        return
    click.echo(format_design_table(res, cfg.primary.metric))
    click.echo(f"* primary contrast; {res['seconds_this_invocation']:.0f} s; report {out}/report.md, results {out}/results.json")

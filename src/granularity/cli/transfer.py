"""``granularity transfer`` (one pretrain -> transfer run) and the options every real-data
command shares (``study``, ``advise``)."""

from __future__ import annotations

from pathlib import Path

import click

from granularity.cli.options import PROTOCOLS, apply_options


def _raw(config: Path | None, flags: dict, sets: tuple[str, ...], base: dict | None = None) -> dict:
    """base < file < flags < --set, as one mapping (validated by the caller)."""
    from granularity.utils.config import apply_overrides, deep_merge, load_config_file

    raw = deep_merge(base or {}, load_config_file(config) if config is not None else {})
    return apply_overrides(deep_merge(raw, {k: v for k, v in flags.items() if v is not None}), sets)


def _resolve(model_cls, config: Path | None, flags: dict, sets: tuple[str, ...]):
    """defaults < file < flags < --set, validated once with one-line errors."""
    return model_cls.build(_raw(config, flags, sets))


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

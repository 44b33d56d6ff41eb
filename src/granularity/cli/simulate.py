"""``granularity simulate`` and ``granularity phase``."""

from __future__ import annotations

from pathlib import Path

import click

from granularity.cli.options import apply_options, seed_list, seeds_options

from granularity.theory.presets import PRESETS, resolve_config


def _preset_help() -> str:
    return "; ".join(f"{p.name}: {p.summary()}" for p in PRESETS.values())


common = [
    click.option("--preset", default="paper", show_default=True, metavar="NAME",
                 help="Named experiment; one of: " + ", ".join(PRESETS)),
    click.option("--config", "config", type=click.Path(path_type=Path), default=None,
                 help="YAML/JSON file of config overrides (applied after the preset)."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Override one config field, e.g. --set data.k=16 --set train.steps=500."),
    *seeds_options,  # consecutive seeds: a count (5), a list (3,4,5), or --seed N
    click.option("--quiet", is_flag=True, help="No progress bar."),
]


@click.command(epilog="Presets: " + _preset_help())
@apply_options(common)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder (default runs/simulate/<preset>); rerunning resumes it.")
@click.option("--dry-run", is_flag=True, help="Validate and print the resolved config and its memory estimate; run nothing.")
def simulate(preset, config, sets, seeds, one_seed, quiet, out, dry_run):
    """Coarse vs fine pretraining in the hierarchical multi-view model, transferred to the
    coarse task by map / probe / finetune; easy vs hard test error and feature alignment."""
    from granularity.theory.experiment import check_memory, estimate_memory, format_table, simulate as run

    cfg, _ = resolve_config(preset, config, sets, seed_list(seeds, one_seed, counts=True))
    if dry_run:
        import json

        check_memory(cfg)
        click.echo(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        click.echo(f"memory estimate: {estimate_memory(cfg) / 2**20:.1f} MiB")
        return
    out = out or Path("runs") / "simulate" / preset
    result = run(cfg, out, progress=not quiet, log=lambda m: click.echo(m, err=True))
    click.echo(format_table(result))
    click.echo(f"results: {out}/result.json, figures: {out}/figures/")


@click.command(epilog="Presets: " + _preset_help())
@apply_options(common)
@click.option("--x", "x_axis", default="data.k=4,8,16", show_default=True, help="Columns: key=v1,v2,...")
@click.option("--y", "y_axis", default="data.sigma=0.03125,0.0625,0.125", show_default=True,
              help="Rows: key=v1,v2,...")
@click.option("--protocol", type=click.Choice(["map", "probe", "finetune"]), default="map", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder (default runs/phase/<preset>); rerunning resumes it.")
@click.option("--plot-only", is_flag=True, help="Only redraw phase.json/phase.png from the stored cells.")
def phase(preset, config, sets, seeds, one_seed, quiet, x_axis, y_axis, protocol, out, plot_only):
    """Phase diagram: hard-sample error of coarse vs fine pretraining over a grid of two
    config fields, drawn as heatmaps from the stored per-cell results."""
    from granularity.sweeps.phase import run_phase
    from granularity.theory.phase import build_phase, format_phase

    out = out or Path("runs") / "phase" / preset
    if plot_only:
        result = build_phase(out)
    else:
        cfg, raw = resolve_config(preset, config, sets, seed_list(seeds, one_seed, counts=True) or 3)
        raw["seeds"] = cfg.seeds
        result = run_phase(raw, x_axis, y_axis, out, protocol, progress=not quiet,
                           log=lambda m: click.echo(m, err=True))
    click.echo(format_phase(result))
    click.echo(f"phase diagram: {out}/phase.png")

"""``granularity sweep`` and ``granularity results``."""

from __future__ import annotations

from pathlib import Path

import click

from granularity.cli.options import apply_options, fuse_options, parse_size


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Results store (default runs/sweeps/<sweep name>); several sweeps may share one.")
@click.option("--executor", type=click.Choice(["local", "ray", "slurm"]), default="local", show_default=True,
              help="Local worker processes, Ray tasks (a local Ray instance or a cluster), or SLURM job arrays (submitit).")
@click.option("--workers", type=click.IntRange(1, 4096), default=None,
              help="Runs at a time (default: the cores this process may use, or the Ray cluster's CPUs).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Torch threads per run (default: cores // workers, so workers x threads <= cores).")
@click.option("--address", default=None, metavar="ADDR",
              help="Ray cluster address (host:port; default: $RAY_ADDRESS); 'local' or none starts a local Ray instance.")
@click.option("--cpus-per-run", type=float, default=None,
              help="ray/slurm: CPUs each run reserves (default: the sweep file's resources, else --threads).")
@click.option("--gpus-per-run", type=float, default=None,
              help="ray/slurm: GPUs each run reserves; each run sees its own via CUDA_VISIBLE_DEVICES.")
@click.option("--partition", default=None, help="slurm: the partition.")
@click.option("--time-min", type=int, default=None, help="slurm: time limit of each run's job, minutes (default 60).")
@click.option("--slurm-cluster", type=click.Choice(["slurm", "local"]), default=None,
              help="slurm: 'local' runs the jobs as processes on this machine (submitit's local executor).")
@click.option("--slurm-param", "slurm_params", multiple=True, metavar="KEY=VALUE",
              help="slurm: another sbatch setting through submitit, e.g. account=abc, qos=high, mem_gb=32.")
@click.option("--store-mode", type=click.Choice(["auto", "wal", "shared"]), default="auto", show_default=True,
              help="Index journal: wal (local disk), shared (NFS/Lustre/GPFS: rollback journal + lock directory); "
                   "auto picks shared on a network file system.")
@click.option("--track", default=None, metavar="BACKENDS",
              help="Log every run to tensorboard and/or mlflow (comma-separated), e.g. --track tensorboard,mlflow.")
@click.option("--track-dir", type=click.Path(path_type=Path), default=None,
              help="Where tracking writes (default <store>/tracking): tensorboard/ event files, mlflow/ file store.")
@apply_options(fuse_options)
@click.option("--skip-failed", is_flag=True, help="Do not run again runs recorded as failed.")
@click.option("--dry-run", is_flag=True, help="Validate and list the runs (id, axis values, seed, status); run nothing.")
@click.option("--quiet", is_flag=True, help="Only the summary.")
def sweep(file, out, executor, workers, threads, address, cpus_per_run, gpus_per_run, partition, time_min,
          slurm_cluster, slurm_params, store_mode, track, track_dir, fuse, fuse_memory, skip_failed, dry_run, quiet):
    """Run the sweep file FILE: expand its axes and seeds into runs, skip finished ones, resume
    interrupted ones, record failures without stopping the others. With --fuse (local executor),
    transfer runs of one model and data train as fused groups, each keeping its own run folder.

    \b
    Example sweep file:
      kind: simulate
      preset: quick
      axes:
        data.k: [2, 4, 8]
        data.sigma: {geom: [0.03, 0.12, 3]}
      seeds: 3
    """
    fuse_bytes = parse_size(fuse_memory)  # a bad size is refused before anything is read
    import granularity.experiments  # noqa: F401 (registers the transfer kind's presets study, study-quick)
    from granularity.sweeps.runner import run_sweep
    from granularity.sweeps.spec import load_sweep

    sw = load_sweep(file)  # validates every run before anything starts
    if dry_run:
        from granularity.sweeps.query import run_statuses

        store_path = out or Path("runs") / "sweeps" / sw.name
        status = run_statuses(store_path, [r.run_id for r in sw.runs])
        for r in sw.runs:
            params = " ".join(f"{k}={v}" for k, v in r.params.items())
            click.echo(f"{r.run_id}  {status.get(r.run_id, 'new'):8s} {params}")
        click.echo(f"{len(sw.runs)} runs of kind {sw.kind!r}; store {store_path}", err=True)
        return
    log = None if quiet else (lambda m: click.echo(m, err=True))
    options = {"cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run, "partition": partition,
               "time_min": time_min, "cluster": slurm_cluster, "slurm_params": _key_values(slurm_params, "--slurm-param")}
    tracker = None
    if track:
        from granularity.tracking import SweepTracker

        tracker = SweepTracker(track, track_dir or (out or Path("runs") / "sweeps" / sw.name) / "tracking", sweep=sw.name)
    try:
        summary = run_sweep(sw, out, executor=executor, workers=workers, threads=threads, address=address,
                            retry_failed=not skip_failed, log=log, store_mode=store_mode, executor_options=options,
                            tracker=tracker, fuse=fuse, fuse_memory=fuse_bytes)
    finally:
        if tracker is not None:
            tracker.close()
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary["counts"].items()))
    click.echo(f"sweep {summary['name']!r}: {summary['total']} runs ({counts}); {summary['ran']} ran, "
               f"{summary['skipped']} skipped as finished, {summary['wall_time']:.1f} s; store {summary['store']}")
    for f in summary["failures"]:
        params = " ".join(f"{k}={v}" for k, v in f["params"].items())
        click.echo(f"  failed {f['run_id']} {params}: {f['error']}")
    if summary["failures"]:
        click.echo(f"granularity: {len(summary['failures'])} of {summary['total']} runs failed; "
                   f"see: granularity results {summary['store']} --filter status=failed", err=True)
        click.get_current_context().exit(1)


def _key_values(items: tuple[str, ...], option: str) -> dict[str, object]:
    from granularity.errors import GranularityError
    from granularity.utils.config import parse_value

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise GranularityError(f"The '{option}' option must look like key=value. Got {item!r} instead.")
        out[key.strip()] = parse_value(value.strip())
    return out


@click.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Keep matching runs, e.g. --filter status=ok --filter data.k=4 (also !=, <, <=, >, >=).")
@click.option("--columns", default=None, metavar="A,B,...",
              help="Columns to show/export (default: id, status, the sweeps' axes, seed, key metrics); 'all' for every column.")
@click.option("--sweep", "sweep_name", default=None, help="Only the runs of this sweep of the store.")
@click.option("--export", type=click.Path(path_type=Path), default=None,
              help="Write the table to a .csv or .parquet file instead of printing it.")
@click.option("--migrate", is_flag=True,
              help="Rewrite the result folders under STORE (stores, run, phase, study folders) made by a release "
                   "before the one vocabulary in today's spelling, with run ids from it; once.")
def results(store, filters, columns, sweep_name, export, migrate):
    """List, filter and export the index of the results store STORE (config fields and metrics
    flattened into columns)."""
    import pandas as pd

    if migrate:
        from granularity.sweeps.migrate import migrate as migrate_folder

        changed = migrate_folder(store)
        for line in changed:
            click.echo(line)
        click.echo(f"{len(changed)} files or folders rewritten in today's spelling under {store}", err=True)
        return
    from granularity.sweeps.query import query_store

    df = query_store(store, filters=filters, columns=columns, sweep=sweep_name, export=export)
    if df is None:
        click.echo("(no runs)", err=True)
        return
    if export is not None:
        click.echo(f"{len(df)} runs written to {export}", err=True)
        return
    with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200):
        # 10 significant digits: a shown float typed into --filter selects its runs (rel. tolerance 1e-9)
        click.echo(df.to_string(index=False, float_format=lambda v: f"{v:.10g}") if len(df) else "(no matching runs)")

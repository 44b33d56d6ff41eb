"""``granularity sweep`` and ``granularity results``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Results store (default runs/sweeps/<sweep name>); several sweeps may share one.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Local worker processes, or Ray tasks (a local Ray instance or a cluster).")
@click.option("--workers", type=click.IntRange(1, 4096), default=None,
              help="Runs at a time (default: the cores this process may use, or the Ray cluster's CPUs).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Torch threads per run (default: cores // workers, so workers x threads <= cores).")
@click.option("--address", default=None, metavar="ADDR",
              help="Ray cluster address (host:port); 'local' or none starts a local Ray instance.")
@click.option("--skip-failed", is_flag=True, help="Do not run again runs recorded as failed.")
@click.option("--dry-run", is_flag=True, help="Validate and list the runs (id, axis values, seed, status); run nothing.")
@click.option("--quiet", is_flag=True, help="Only the summary.")
def sweep(file, out, executor, workers, threads, address, skip_failed, dry_run, quiet):
    """Run the sweep file FILE: expand its axes and seeds into runs, skip finished ones, resume
    interrupted ones, record failures without stopping the others.

    \b
    Example sweep file:
      kind: simulate
      preset: quick
      axes:
        data.k: [2, 4, 8]
        data.sigma: {geom: [0.03, 0.12, 3]}
      seeds: 3
    """
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
    summary = run_sweep(sw, out, executor=executor, workers=workers, threads=threads, address=address,
                        retry_failed=not skip_failed, log=log)
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


@click.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Keep matching runs, e.g. --filter status=ok --filter data.k=4 (also !=, <, <=, >, >=).")
@click.option("--columns", default=None, metavar="A,B,...",
              help="Columns to show/export (default: id, status, the sweeps' axes, seed, key metrics); 'all' for every column.")
@click.option("--sweep", "sweep_name", default=None, help="Only the runs of this sweep of the store.")
@click.option("--export", type=click.Path(path_type=Path), default=None,
              help="Write the table to a .csv or .parquet file instead of printing it.")
def results(store, filters, columns, sweep_name, export):
    """List, filter and export the index of the results store STORE (config fields and metrics
    flattened into columns)."""
    import pandas as pd

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

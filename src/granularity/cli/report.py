"""``granularity report``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/report"), show_default=True,
              help="Report folder: index.html (self-contained) and figures/*.png.")
@click.option("--title", default="granularity report", show_default=True)
@click.option("--protocol", type=click.Choice(["map", "probe", "finetune"]), default=None,
              help="Only this transfer protocol in sweep heatmaps (default: every stored one).")
def report(results, out, title, protocol):
    """Build an HTML report from RESULTS: simulate run folders, phase folders, sweep stores
    (a simulate sweep over two axes gives phase-diagram heatmaps, mean over seeds per cell)."""
    from granularity.report.build import build_report

    page = build_report(list(results), out, title=title, protocol=protocol)
    n = len(list((out / "figures").glob("*.png")))
    click.echo(f"report: {page} ({n} figures in {out / 'figures'})")

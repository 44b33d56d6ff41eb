"""``granularity bench``: performance benchmarks, one JSON per machine and device."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("bench")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True,
              help="Folder of the JSON result (one file per machine/device).")
@click.option("--only", default=None, metavar="NAMES",
              help="Comma-separated subset of: step, seeds, whole, engine, generator, fused.")
@click.option("--tiny", is_flag=True, help="Smoke-test sizes (seconds; figures not meaningful).")
@click.option("--full", is_flag=True, help="Full-size comparison 3 (minutes) and paper-size generator memory.")
@click.option("--scale", type=click.FloatRange(0.001, 10), default=None,
              help="Step-count factor of comparison 3 for both implementations [default: 0.1, 1 with --full].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--name", default=None, help="File name (without .json) [default: cpu-<threads>core or cuda-<gpu>].")
def bench(out: Path, only: str | None, tiny: bool, full: bool, scale: float | None, device: str, name: str | None) -> None:
    """Run the performance benchmarks and write JSON (ratios measured side by side)."""
    from granularity.bench.run import parse_only, run_benchmarks

    parse_only(only)  # a typo fails before anything runs
    rec = run_benchmarks(device=device, only=only, tiny=tiny, full=full, scale=scale, out=out, name=name,
                         log=lambda s: click.echo(s, err=True))
    for n, s in rec["summary"].items():
        click.echo(f"{s['figure']}. {n}: {s['value']:.3g} (target {s['target']}): {'met' if s['met'] else 'missed'}")
    click.echo(f"wrote {rec['path']} ({rec['seconds']:.0f} s, load average {rec['load_average_after']})")

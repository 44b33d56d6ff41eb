"""Disjoint pretrain / transfer / val splits; Fashion-MNIST groupings from names, files and lists."""

from __future__ import annotations

import json

import numpy as np
import pytest

from granularity.data.fashion_mnist import LEAF_NAMES
from granularity.data.hierarchies import FASHION_MNIST_GROUPINGS, parse_grouping
from granularity.data.splits import disjoint_splits, per_class_prefix
from granularity.errors import GranularityError


def test_splits_disjoint_sized_and_nested():
    leaf = np.arange(3000) % 10
    target = np.array([0, 1, 0, 0, 0, 2, 0, 2, 3, 2])[leaf]
    sp = disjoint_splits(target, leaf, transfer_per_class=50, val=200, pretrain=1000, seed=4)
    sets = [set(sp[k].tolist()) for k in ("transfer", "val", "pretrain")]
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])
    assert len(sp["val"]) == 200 and len(sp["pretrain"]) == 1000
    assert np.array_equal(np.bincount(target[sp["transfer"]]), [50, 50, 50, 50])
    small = per_class_prefix(sp["transfer"], target, 5)
    assert set(small) <= set(sp["transfer"]) and np.array_equal(np.bincount(target[small]), [5, 5, 5, 5])
    again = disjoint_splits(target, leaf, transfer_per_class=50, val=200, pretrain=1000, seed=4)
    assert all(np.array_equal(sp[k], again[k]) for k in sp)
    with pytest.raises(GranularityError, match="'transfer_per_class' parameter must be at most 300"):
        disjoint_splits(target, leaf, transfer_per_class=301, val=0, pretrain=None, seed=0)
    with pytest.raises(GranularityError, match="lower 'pretrain_size'"):
        disjoint_splits(target, leaf, transfer_per_class=50, val=200, pretrain=2900, seed=0)


@pytest.mark.parametrize("name", sorted(FASHION_MNIST_GROUPINGS))
def test_named_groupings_cover_every_leaf_once(name):
    g, names = parse_grouping(name, LEAF_NAMES)
    assert len(g) == 10 and set(g) == set(range(len(names)))
    for group, members in FASHION_MNIST_GROUPINGS[name].items():
        assert {LEAF_NAMES[i] for i in np.flatnonzero(g == names.index(group))} == set(members)


def test_confusable_pairs_are_split():
    g, _ = parse_grouping("confusable", LEAF_NAMES)
    idx = LEAF_NAMES.index
    for a, b in (("T-shirt/top", "Shirt"), ("Pullover", "Coat"), ("Sneaker", "Sandal")):
        assert g[idx(a)] != g[idx(b)]
    nat, _ = parse_grouping("natural4", LEAF_NAMES)
    assert nat[idx("T-shirt/top")] == nat[idx("Shirt")]


def test_random_grouping_is_seeded_and_balanced():
    a, _ = parse_grouping("random", LEAF_NAMES, seed=1)
    assert np.array_equal(a, parse_grouping("random", LEAF_NAMES, seed=1)[0])
    assert not np.array_equal(a, parse_grouping("random", LEAF_NAMES, seed=2)[0])
    assert sorted(np.bincount(a)) == [2, 2, 3, 3]
    assert len(set(parse_grouping("random:3", LEAF_NAMES, seed=0)[0])) == 3


def test_user_grouping_list_and_file(tmp_path):
    g, names = parse_grouping("0,6; 2,4,Dress; Sandal,7,9; 1,8", LEAF_NAMES)
    assert names == ["G0", "G1", "G2", "G3"] and g[LEAF_NAMES.index("Shirt")] == 0 and g[3] == 1
    f = tmp_path / "g.json"
    f.write_text(json.dumps({"x": ["T-shirt/top", "Trouser", 2, 3, 4], "y": [5, 6, 7, 8, 9]}))
    g, names = parse_grouping(str(f), LEAF_NAMES)
    assert names == ["x", "y"] and list(g) == [0] * 5 + [1] * 5


@pytest.mark.parametrize("spec,msg", [
    ("0,1;2,3", "leaves out 6 leaf class"),
    ("0,1,2,3,4,5,6,7,8;9,0", "puts leaf 'T-shirt/top' in two groups"),
    ("0,1,2,3,4,5,6,7,8,Bagg;9", "Unknown leaf class in the grouping 'Bagg'"),
    ("0,1,2,3,4,5,6,7,8,12;9", "names leaf id 12"),
    ("natural5", "Unknown grouping 'natural5'"),
    ("random:1", "needs between 2 and 10 groups"),
])
def test_bad_groupings(spec, msg):
    with pytest.raises(GranularityError, match=msg):
        parse_grouping(spec, LEAF_NAMES)

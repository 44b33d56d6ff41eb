import json

import numpy as np
import pytest

from granularity.errors import HierarchyError
from granularity.hierarchy import LabelHierarchy, fashion_mnist_hierarchy


def unbalanced():
    # root -> A -> {a1, a2}, root -> B -> C -> {c1}, root -> d (a shallow leaf)
    parent = {"A": "r", "B": "r", "C": "B", "a1": "A", "a2": "A", "c1": "C", "d": "r"}
    return LabelHierarchy(parent, "r", ["a1", "a2", "c1", "d"])


def test_fashion_mnist_levels_and_relabel():
    h = fashion_mnist_hierarchy()
    assert h.depth == 3 and h.level_sizes() == [1, 2, 4, 10]
    assert h.leaves[0] == "T-shirt/top" and h.leaves[9] == "Ankle boot"
    assert h.level_nodes(1) == ["clothes", "goods"]
    assert h.level_nodes(2) == ["tops", "trousers", "footwear", "bags"]
    y = np.arange(10)
    np.testing.assert_array_equal(h.relabel(y, 2), [0, 1, 0, 0, 0, 2, 0, 2, 3, 2])
    np.testing.assert_array_equal(h.relabel(y, 1), [0, 0, 0, 0, 0, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(h.relabel(y, 3), y)
    np.testing.assert_array_equal(h.relabel(y, "groups4"), h.ancestor_map(2))
    assert h.relabel(y, 2).dtype == np.int64
    assert h.class_counts(np.array([0, 6, 8, 8]), 2).tolist() == [2, 0, 0, 2]


def test_unbalanced_shallow_leaf_keeps_label():
    h = unbalanced()
    assert h.depth == 3
    assert h.level_nodes(1) == ["A", "B", "d"]
    assert h.level_nodes(2) == ["C", "a1", "a2", "d"]
    assert h.level_nodes(3) == ["a1", "a2", "c1", "d"]
    np.testing.assert_array_equal(h.relabel([0, 1, 2, 3], 2), [1, 2, 0, 3])
    assert h.ancestors("c1") == ["C", "B", "r"]
    assert h.path("c1") == ["r", "B", "C", "c1"]
    assert h.lca("a1", "a2") == "A" and h.lca("a1", "c1") == "r" and h.lca("C", "c1") == "C"
    assert h.distance("a1", "a2") == 2 and h.distance("a1", "c1") == 5 and h.distance("d", "d") == 0
    assert h.leaves_under("B") == ["c1"] and h.descendants("B") == ["C", "c1"]
    assert h.summary()["levels"][2]["num_shallow_leaves"] == 1


def test_json_roundtrip_and_hash(tmp_path):
    h = unbalanced()
    p = h.save(tmp_path / "h.json")
    g = LabelHierarchy.load(p)
    assert g == h and g.content_hash == h.content_hash and g.level_sizes() == h.level_sizes()
    assert LabelHierarchy.from_dict(json.loads(h.to_json())).leaves == h.leaves
    # the hash depends on the structure and label order, not on names/meta
    h2 = LabelHierarchy(dict(reversed(list(h._parent.items()))), "r", h.leaves, name="other", meta={"x": 1})
    assert h2.content_hash == h.content_hash
    h3 = LabelHierarchy(h._parent, "r", ["a2", "a1", "c1", "d"])
    assert h3.content_hash != h.content_hash
    d = h.to_dict()
    d["parent"]["d"] = "A"
    with pytest.raises(HierarchyError, match="content hash"):
        LabelHierarchy.from_dict(d)


def test_from_pairs_and_parent_map():
    fine = np.array([0, 1, 2, 3, 3, 2])
    coarse = np.array([1, 0, 1, 0, 0, 1])
    h = LabelHierarchy.from_pairs(fine, coarse, ["f0", "f1", "f2", "f3"], ["c0", "c1"])
    assert h.level_nodes(1) == ["c0", "c1"] and h.leaves == ["f0", "f1", "f2", "f3"]
    np.testing.assert_array_equal(h.relabel(fine, 1), coarse)
    g = LabelHierarchy.from_parent_map({"f0": "c1", "f1": ["c0"], "f2": "c1", "f3": "c0", "c0": "root", "c1": "root"})
    assert g.root == "root" and g.leaves == ["f0", "f1", "f2", "f3"]
    assert g.relabel([0, 1], 1).tolist() == [0, 1]  # internal order follows the first leaf below
    e = LabelHierarchy.from_edges([("x", "R"), ("y", "R")])
    assert e.depth == 1 and e.level_sizes() == [1, 2]


def test_from_paths_homonyms_and_missing():
    rows = [["Animalia", "Morus", "Morus bassanus"], ["Plantae", "Morus", "Morus alba"],
            ["Plantae", None, "Odd plant"]]
    h = LabelHierarchy.from_paths(rows, ["kingdom", "genus", "species"], prefix_levels=True)
    assert h.level_sizes() == [1, 2, 3, 3]
    assert h.parent("Morus bassanus") == "genus:Morus (kingdom:Animalia)"
    assert h.parent("Odd plant") == "genus:(no genus)"
    with pytest.raises(HierarchyError, match="two parents"):
        LabelHierarchy.from_paths(rows, disambiguate=False)


def test_cut_from_leaves_and_compress():
    h = unbalanced()
    assert h.height_map(0)[0] == h.leaves
    names, idx = h.height_map(1)
    assert names == ["A", "C", "d"] and idx.tolist() == [0, 0, 1, 2]
    c = h.cut_from_leaves(max_classes=3)
    assert c.depth == 2 and c.level_nodes(1) == ["A", "C", "d"]
    assert c.relabel([0, 1, 2, 3], 1).tolist() == [0, 0, 1, 2]
    assert h.compress().level_sizes() == [1, 3, 4]  # B -> C chain collapses
    s = h.subset(["c1", "a1"])
    assert s.leaves == ["c1", "a1"] and "a2" not in s


def test_matrices_match_pairwise():
    h = unbalanced()
    D = h.leaf_distance_matrix()
    for i, a in enumerate(h.leaves):
        for j, b in enumerate(h.leaves):
            assert D[i, j] == h.distance(a, b)
    G = fashion_mnist_hierarchy().group_matrix(2)
    assert G.shape == (10, 4) and G.sum() == 10


def test_render_and_label_space():
    h = fashion_mnist_hierarchy()
    text = h.render(depth=2)
    assert "tops [5 leaves]" in text and "Shirt" not in text
    ls = h.label_space(2)
    assert ls == {"hierarchy": "fashion-mnist", "content_hash": h.content_hash, "level": 2,
                  "level_name": "groups4", "num_classes": 4}

"""labels_at_level: samples labelled at any node, missing ancestors, per-level policies."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granularity.errors import HierarchyError
from granularity.hierarchy import fashion_mnist_hierarchy, labels_at_level

from .test_properties import naive_path, trees

POLICIES = ["fill", "drop", "own"]


def expected(h, node, names, lv, policy):
    """Class name (or None = dropped) from the documented table, computed from naive paths."""
    path = naive_path(h, node)  # root .. node
    if len(path) - 1 < lv and not h.is_leaf(node):  # labelled above the level
        return node if policy == "own" else None
    target = path[min(lv, len(path) - 1)]
    if policy == "drop" and names is not None and target not in names and target != h.root:
        return None
    return target


@st.composite
def samples(draw, h):
    """Node names (any node) and partial paths (a node's path with random blanks)."""
    out = []
    for _ in range(draw(st.integers(1, 25))):
        node = draw(st.sampled_from(h.nodes))
        if draw(st.booleans()):
            out.append(node)
        else:
            path = naive_path(h, node)
            blank = draw(st.lists(st.booleans(), min_size=len(path), max_size=len(path)))
            blank[-1] = False  # the sample's own node is given
            out.append([None if b else x for x, b in zip(path, blank)])
    return out


@settings(max_examples=80, deadline=None)
@given(trees(), st.data())
def test_labels_follow_the_policy_table(h, data):
    s = data.draw(samples(h))
    lv = data.draw(st.sampled_from(h.levels))
    for policy in POLICIES:
        r = labels_at_level(h, s, lv, policy)
        assert r.labels.dtype == np.int64 and r.keep.dtype == bool and r.level == lv
        assert len(set(r.classes)) == len(r.classes) and r.classes[: h.num_classes(lv)] == h.level_nodes(lv)
        for x, lab, k in zip(s, r.labels, r.keep):
            node = x if isinstance(x, str) else [n for n in x if n is not None][-1]
            names = None if isinstance(x, str) else {n for n in x if n is not None}
            want = expected(h, node, names, lv, policy)
            assert (want is None) == (not k) == (lab == -1)
            if want is not None:
                assert r.classes[lab] == want
        # leaves are complete labels: every policy gives relabel's answer
        leaf_rows = [i for i, x in enumerate(s) if isinstance(x, str) and h.is_leaf(x)]
        leaf_idx = [h.leaf_index(s[i]) for i in leaf_rows]
        np.testing.assert_array_equal(r.labels[leaf_rows], h.relabel(np.array(leaf_idx, dtype=np.int64), lv))


@settings(max_examples=50, deadline=None)
@given(trees(), st.data())
def test_order_and_mix_invariance(h, data):
    s = data.draw(samples(h))
    lv = data.draw(st.sampled_from(h.levels))
    perm = data.draw(st.permutations(range(len(s))))
    for policy in POLICIES:
        full = labels_at_level(h, s, lv, policy)
        shuffled = labels_at_level(h, [s[i] for i in perm], lv, policy)
        np.testing.assert_array_equal(shuffled.labels, full.labels[perm])
        part = labels_at_level(h, s[:1], lv, policy)  # another split: same classes, same labels
        assert part.classes == full.classes and part.labels[0] == full.labels[0]


@settings(max_examples=50, deadline=None)
@given(trees(), st.data())
def test_kept_labels_nest_across_levels(h, data):
    s = data.draw(samples(h))
    for policy in ("fill", "drop"):
        for lv in range(h.depth):
            a, b = labels_at_level(h, s, lv, policy), labels_at_level(h, s, lv + 1, policy)
            both = a.keep & b.keep
            for ca, cb in zip(a.labels[both], b.labels[both]):
                assert a.classes[ca] in naive_path(h, b.classes[cb])
            if policy == "fill":  # (under drop a blank coarse annotation drops only that level)
                assert not (b.keep & ~a.keep).any()  # kept at a finer level -> kept above it


def test_worked_example():
    h = fashion_mnist_hierarchy()  # clothes > tops > {T-shirt/top, ...}, goods > bags > Bag, ...
    s = ["Trouser", "tops", ["clothes", None, "Shirt"], ["goods", "bags"], "clothes"]
    fill = labels_at_level(h, s, 2, "fill")
    assert [fill.classes[i] if k else None for i, k in zip(fill.labels, fill.keep)] == [
        "trousers", "tops", "tops", "bags", None]
    drop = labels_at_level(h, s, 2, "drop")  # Shirt's 'tops' annotation is missing
    assert drop.keep.tolist() == [True, True, False, True, False]
    own = labels_at_level(h, s, 2, "own")
    assert own.classes == ["tops", "trousers", "footwear", "bags", "fashion-mnist", "clothes", "goods"]
    assert own.keep.all() and own.classes[own.labels[4]] == "clothes"
    deep = labels_at_level(h, s, 3, {1: "drop", 3: "own"})
    assert deep.policy == "own" and deep.classes[deep.labels[1]] == "tops"


@pytest.mark.parametrize(
    "samples, level, policy, match",
    [
        (["Trousers"], 2, "fill", r"'Trousers' are missing from the hierarchy .*did you mean 'Trouser'"),
        ([["goods", "Shirt"]], 2, "fill", "'goods' is not an ancestor of 'Shirt'"),
        ([[None, ""]], 2, "fill", "Sample 0 has no label"),
        (["Bag", float("nan")], 2, "fill", "Sample 1 has no label"),
        (["Bag", " "], 2, "fill", "Sample 1 has no label"),
        ([3], 2, "fill", "Sample 0: a label must be a node name"),
        (["Bag"], 2, "keep", "'policy' parameter must be one of fill, drop, own"),
        (["Bag"], 2, {1: "fill"}, "no entry for level 2"),
        (["Bag"], 2.5, "fill", "Level must be an integer"),
        (["Bag"], 7, "fill", "out of range"),
    ],
)
def test_errors(samples, level, policy, match):
    with pytest.raises(HierarchyError, match=match) as e:
        labels_at_level(fashion_mnist_hierarchy(), samples, level, policy)
    assert "\n" not in str(e.value)

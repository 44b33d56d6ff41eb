import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from granularity.hierarchy import LabelHierarchy


@st.composite
def trees(draw):
    """Random rooted trees: node i > 0 has a parent among nodes 0..i-1 (node 0 is the root)."""
    n = draw(st.integers(2, 25))
    parents = [draw(st.integers(0, i - 1)) for i in range(1, n)]
    parent = {f"n{i}": f"n{p}" for i, p in zip(range(1, n), parents)}
    has_child = set(parent.values())
    leaves = [c for c in parent if c not in has_child]
    order = draw(st.permutations(leaves))
    return LabelHierarchy(parent, "n0", list(order))


def naive_path(h, node):
    out = [node]
    while (p := h.parent(out[-1])) is not None:
        out.append(p)
    return out[::-1]


@settings(max_examples=60, deadline=None)
@given(trees(), st.data())
def test_relabel_matches_paths(h, data):
    labels = np.array(data.draw(st.lists(st.integers(0, h.num_leaves - 1), min_size=1, max_size=30)))
    for lv in h.levels:
        nodes = h.level_nodes(lv)
        assert len(set(nodes)) == len(nodes)
        got = h.relabel(labels, lv)
        for lab, g in zip(labels, got):
            p = naive_path(h, h.leaves[lab])
            assert nodes[g] == p[min(lv, len(p) - 1)]
        np.testing.assert_array_equal(got, h.ancestor_map(lv)[labels])
    np.testing.assert_array_equal(h.relabel(np.arange(h.num_leaves), h.depth)[np.argsort(h.relabel(np.arange(h.num_leaves), h.depth))], np.arange(h.num_leaves))
    # levels nest: equal classes at level l+1 imply equal classes at level l
    for lv in range(h.depth):
        fine, coarse = h.ancestor_map(lv + 1), h.ancestor_map(lv)
        for c in np.unique(fine):
            assert len(np.unique(coarse[fine == c])) == 1


@settings(max_examples=60, deadline=None)
@given(trees(), st.data())
def test_ancestors_lca_distance(h, data):
    a = data.draw(st.sampled_from(h.nodes))
    b = data.draw(st.sampled_from(h.nodes))
    anc = h.ancestors(a)
    assert anc == naive_path(h, a)[::-1][1:] and (not anc or anc[-1] == h.root)
    c = h.lca(a, b)
    common = set(naive_path(h, a)) & set(naive_path(h, b))
    assert c in common and all(h.node_depth(x) <= h.node_depth(c) for x in common)
    assert h.distance(a, b) == h.distance(b, a) >= 0
    assert (h.distance(a, b) == 0) == (a == b)
    for leaf in h.leaves_under(a):
        assert a in h.ancestors(leaf, include_self=True)
    D = h.leaf_distance_matrix()
    i, j = data.draw(st.integers(0, h.num_leaves - 1)), data.draw(st.integers(0, h.num_leaves - 1))
    assert D[i, j] == h.distance(h.leaves[i], h.leaves[j])


@settings(max_examples=40, deadline=None)
@given(trees())
def test_roundtrip_and_cuts_nest(h):
    g = LabelHierarchy.from_dict(h.to_dict())
    assert g.content_hash == h.content_hash and g.level_sizes() == h.level_sizes()
    prev = None
    for k in range(h.depth + 1):
        _, idx = h.height_map(k)
        if prev is not None:
            for c in np.unique(prev):
                assert len(np.unique(idx[prev == c])) == 1
        prev = idx
    assert h.compress().num_leaves == h.num_leaves

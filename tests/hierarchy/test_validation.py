import numpy as np
import pytest

from granularity.errors import HierarchyError
from granularity.hierarchy import LabelHierarchy, fashion_mnist_hierarchy


def one_line(exc):
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(parent={"a": "b", "b": "a", "c": "r"}, root="r"), "Cycle"),
        (dict(parent={"a": "r", "r": "a"}, root="r"), "root 'r' has a parent"),
        (dict(parent={"a": "r", "b": "x"}, root="r"), "Unknown node 'x'"),
        (dict(parent={}, root="r"), "empty"),
        (dict(parent={"a": "r", "b": "r"}, root="r", leaves=["a", "a", "b"]), "Duplicate name"),
        (dict(parent={"a": "r", "b": "r"}, root="r", leaves=["a", "zz", "b"]), "missing from the hierarchy"),
        (dict(parent={"a": "r", "b": "a"}, root="r", leaves=["a", "b"]), "has children"),
        (dict(parent={"a": "r", "b": "r"}, root="r", leaves=["a"]), "not in leaves"),
        (dict(parent={"a": "r"}, root="r", level_names=["x"]), "level_names"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(HierarchyError, match=match) as e:
        LabelHierarchy(**kwargs)
    one_line(e)


def test_two_parents():
    with pytest.raises(HierarchyError, match="two parents") as e:
        LabelHierarchy.from_pairs(np.array([0, 0, 1]), np.array([0, 1, 1]))
    one_line(e)
    with pytest.raises(HierarchyError, match="2 parents"):
        LabelHierarchy.from_parent_map({"a": ["r", "s"], "r": "t", "s": "t"})
    with pytest.raises(HierarchyError, match="two parents"):
        LabelHierarchy.from_edges([("a", "r"), ("a", "s")])
    with pytest.raises(HierarchyError, match="2 top nodes"):
        LabelHierarchy.from_parent_map({"a": "r", "b": "s"})


def test_pairs_errors():
    with pytest.raises(HierarchyError, match="empty"):
        LabelHierarchy.from_pairs(np.array([], dtype=int), np.array([], dtype=int))
    with pytest.raises(HierarchyError, match="never occurs"):
        LabelHierarchy.from_pairs(np.array([0, 2]), np.array([0, 0]))
    with pytest.raises(HierarchyError, match="no fine labels"):
        LabelHierarchy.from_pairs(np.array([0, 1]), np.array([0, 0]), coarse_names=["x", "y"])
    with pytest.raises(HierarchyError, match="Duplicate name"):
        LabelHierarchy.from_pairs(np.array([0, 1]), np.array([0, 0]), ["a", "a"])
    with pytest.raises(HierarchyError, match="Duplicate name"):
        LabelHierarchy.from_pairs(np.array([0, 1]), np.array([0, 0]), ["a", "b"], ["a"])
    with pytest.raises(HierarchyError, match="missing from fine_names"):
        LabelHierarchy.from_pairs(np.array([0, 5]), np.array([0, 0]), ["a", "b"])


def test_query_errors():
    h = fashion_mnist_hierarchy()
    with pytest.raises(HierarchyError, match="Label 10 is missing") as e:
        h.relabel(np.array([0, 10]), 1)
    one_line(e)
    with pytest.raises(HierarchyError, match="Label -1 is missing"):
        h.relabel([-1], 1)
    with pytest.raises(HierarchyError, match="integers"):
        h.relabel(np.array([0.5]), 1)
    with pytest.raises(HierarchyError, match="did you mean 'Trouser'"):
        h.relabel_names(["Trousers"], 1)
    with pytest.raises(HierarchyError, match="Unknown node 'shirt'"):
        h.ancestors("shirt")
    with pytest.raises(HierarchyError, match="out of range"):
        h.level_nodes(4)
    with pytest.raises(HierarchyError, match="Unknown level"):
        h.level_nodes("groups3")
    with pytest.raises(HierarchyError, match="is empty"):
        LabelHierarchy.from_paths([["a", None], ["b", None]])


def test_load_errors(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"format": "other"}')
    with pytest.raises(HierarchyError, match="format"):
        LabelHierarchy.load(p)
    p.write_text('{"root": "r"}')
    with pytest.raises(HierarchyError, match="lacks key"):
        LabelHierarchy.load(p)


@pytest.mark.parametrize("level", [2.9, 2.0, True, False, np.float64(1.0), np.bool_(True), None, [1]])
def test_levels_must_be_integers(level):
    # 2.9 and True used to act as levels 2 and 1 silently
    h = fashion_mnist_hierarchy()
    for call in (lambda: h.relabel([0, 1], level), lambda: h.level_nodes(level), lambda: h.num_classes(level)):
        with pytest.raises(HierarchyError, match=r"Level must be an integer 0..3 .* Got .* instead") as e:
            call()
        one_line(e)


def test_integer_levels_of_any_int_type():
    h = fashion_mnist_hierarchy()
    want = h.relabel([0, 9], 2)
    for level in (2, np.int64(2), np.int32(2), -2, "2", "groups4"):
        assert h.relabel([0, 9], level).tolist() == want.tolist()

"""Hierarchies from files (JSON, child,parent CSV/TSV, paths) and matching class names."""

import numpy as np
import pytest

from granularity.errors import GranularityError, HierarchyError
from granularity.hierarchy import (
    LabelHierarchy,
    fashion_mnist_hierarchy,
    load_hierarchy_file,
    match_classes,
)

PATHS = """# genus/species paths, leaves at different depths
Animalia/Chordata/Aves/Corvidae/Corvus/Corvus corax
Animalia/Chordata/Aves/Corvidae/Pica/Pica pica
Animalia/Chordata/Mammalia/Canis lupus
Animalia/Arthropoda/Insecta
Animalia/Chordata/Aves
"""


def one_line(e):
    assert "\n" not in str(e.value)


def test_three_formats_give_the_same_tree(tmp_path):
    f = fashion_mnist_hierarchy()  # '/' separates path names, so 'T-shirt/top' is renamed
    rename = {"T-shirt/top": "T-shirt"}
    h = LabelHierarchy({rename.get(c, c): f.parent(c) for c in f.nodes if c != f.root}, f.root,
                       [rename.get(x, x) for x in f.leaves], f.internal)
    rows = [(c, h.parent(c)) for c in h.nodes if c != h.root]
    (tmp_path / "h.csv").write_text("child,parent\n" + "".join(f'"{c}",{p}\n' for c, p in rows))
    (tmp_path / "h.tsv").write_text("".join(f"{c}\t{p}\n" for c, p in rows))
    (tmp_path / "h.txt").write_text("".join("/".join(h.path(leaf)) + "\n" for leaf in h.leaves))
    h.save(tmp_path / "h.json")
    (tmp_path / "h_json_noext").write_text((tmp_path / "h.json").read_text())
    got = {f: load_hierarchy_file(tmp_path / f) for f in ["h.csv", "h.tsv", "h.txt", "h.json", "h_json_noext"]}
    for f, g in got.items():
        assert g.root == h.root and sorted(g.leaves) == sorted(h.leaves), f
        assert all(g.path(x) == h.path(x) for x in h.leaves), f
    # leaves in row / line order: the parent map's childless nodes, the paths' lines
    assert got["h.txt"].leaves == h.leaves and got["h.json"] == h
    g = match_classes(got["h.csv"], h.leaves)  # the CSV's leaves put in class order
    assert g == got["h.txt"] and g.leaves == h.leaves
    for lv in h.levels:
        assert g.relabel_names(h.leaves, lv) == h.relabel_names(h.leaves, lv)


def test_paths_uneven_depths_prefix_lines_and_homonyms(tmp_path):
    p = tmp_path / "taxa.paths"
    p.write_text(PATHS)
    h = load_hierarchy_file(p)
    assert h.root == "Animalia" and h.leaves == ["Corvus corax", "Pica pica", "Canis lupus", "Insecta"]
    assert [h.node_depth(x) for x in h.leaves] == [5, 5, 3, 2] and h.depth == 5
    assert h.level_sizes() == [1, 2, 3, 3, 4, 4]  # Aves-Mammalia-Insecta; Corvidae-Canis lupus-Insecta
    p.write_text("Plantae/Prunus/Morus\nAnimalia/Sula/Morus bassanus\nAnimalia/Morus/Morus alba\n")
    g = load_hierarchy_file(p)  # two tops: a 'root' above them; 'Morus' is a plant and a bird genus
    assert g.root == "root" and g.parent("Morus (Prunus)") == "Prunus"
    assert g.leaves == ["Morus (Prunus)", "Morus bassanus", "Morus alba"] and g.parent("Morus alba") == "Morus (Animalia)"
    p.write_text("Plantae/Morus/alba\nAnimalia/Morus/bassanus\n")
    g = load_hierarchy_file(p)  # genus Morus in two kingdoms
    assert g.parent("alba") == "Morus (Plantae)" and g.parent("bassanus") == "Morus (Animalia)"


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("h.csv", "a,b,c\n", "line 1: expected 2 fields"),
        ("h.csv", "a,r\na,s\n", "two parents"),
        ("h.csv", "a,r\nb,s\n", "2 top nodes"),
        ("h.csv", "a,b\nb,a\n", "top nodes|Cycle"),
        ("h.csv", "child,parent\n", "no child,parent rows"),
        ("h.csv", "a,\n", "line 1: empty"),
        ("h.tsv", "a\tr\na\tr\n", "Duplicate name"),
        ("h.paths", "a//b\n", "line 1: empty name"),
        ("h.paths", "a/b\na/b\n", "line 2: duplicate path"),
        ("h.paths", "\n# only a comment\n", "no paths"),
        ("h.dat", "just some words\nmore words\n", "Cannot tell the format"),
        ("h.json", "{not json", "h.json"),
        ("missing.csv", None, "does not exist"),
    ],
)
def test_file_errors(tmp_path, name, text, match):
    p = tmp_path / name
    if text is not None:
        p.write_text(text)
    with pytest.raises(GranularityError, match=match) as e:  # HierarchyError, or invalid JSON
        load_hierarchy_file(p)
    one_line(e)


def test_binary_file_is_one_line_error(tmp_path):
    p = tmp_path / "h.csv"
    p.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(HierarchyError, match="cannot be read as UTF-8") as e:
        load_hierarchy_file(p)
    one_line(e)


def test_match_classes_orders_and_restricts():
    h = LabelHierarchy({"cat": "mammal", "dog": "mammal", "mammal": "animal", "trout": "animal"}, "animal")
    g = match_classes(h, ["Trout", "dog"])  # case-insensitive, data order, cat dropped
    assert g.leaves == ["trout", "dog"] and g.level_sizes() == [1, 2, 2]
    np.testing.assert_array_equal(g.relabel([0, 1], 1), [1, 0])  # mammal first in internal order
    assert g.level_nodes(1)[g.relabel([1], 1)[0]] == "mammal"
    assert match_classes(h, h.leaves) is h


@pytest.mark.parametrize(
    "names, match",
    [
        (["dog", "catt", "fish"], r"2 class name\(s\) match no leaf.*'catt' \(did you mean 'cat'\?\), 'fish'"),
        (["dog", "mammal"], "internal nodes"),
        (["dog", "Dog"], "all match leaf 'dog'"),
        ([], "empty"),
    ],
)
def test_match_classes_errors(names, match):
    h = LabelHierarchy({"cat": "mammal", "dog": "mammal", "mammal": "animal", "trout": "animal"}, "animal")
    with pytest.raises(HierarchyError, match=match) as e:
        match_classes(h, names)
    one_line(e)


def test_match_classes_by_wordnet_title(wn):
    from granularity.hierarchy import wordnet as W

    h = W.cifar100_wordnet_hierarchy(wn=wn)
    names = W.resource_names("cifar100")
    g = match_classes(h, names[::-1])
    assert g.leaves == h.leaves[::-1]
    assert match_classes(h, ["maple tree", "Oak-Tree"]).leaves == [h.leaves[names.index("maple_tree")], h.leaves[names.index("oak_tree")]]


def test_cli_accepts_hierarchy_files(tmp_path, capsys):
    from .test_cli import run

    p = tmp_path / "taxa.paths"
    p.write_text(PATHS)
    code, out, _ = run(capsys, "levels", str(p))
    assert code == 0 and "4 leaves, depth 5" in out
    (tmp_path / "t.csv").write_text("cat,mammal\ndog,mammal\nmammal,animal\n")
    code, out, _ = run(capsys, "show", str(tmp_path / "t.csv"))
    assert code == 0 and "mammal [2 leaves]" in out
    code, out, _ = run(capsys, "levels", "file", "--file", str(p))
    assert code == 0 and "depth 5" in out
    code, _, err = run(capsys, "levels", str(tmp_path / "none.csv"))
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1

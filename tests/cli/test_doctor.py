"""`granularity doctor`: missing pieces faked with env variables pointing to empty folders."""

from __future__ import annotations

import json

import pytest

from fakes import write_fake_fmnist
from granularity.data import fashion_mnist as F
from granularity.hierarchy import wordnet_db as W
import granularity.cli.doctor as D


@pytest.fixture()
def bare(tmp_path, monkeypatch):
    """A machine without the apt data: HOME, caches and the data env variables point to empty
    folders and the Debian folders to nothing; the current folder is a fresh tmp folder."""
    import nltk.data

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GRANULARITY_CACHE", str(empty))
    monkeypatch.setenv("GRANULARITY_DATA", str(empty))
    monkeypatch.setenv("GRANULARITY_WORDNET", str(empty))
    monkeypatch.delenv("GRANULARITY_WORDNET_DIR", raising=False)
    monkeypatch.setattr(F, "DEBIAN_DIR", tmp_path / "no-debian-fmnist")
    monkeypatch.setattr(W, "DEBIAN_WORDNET_DIR", tmp_path / "no-debian-wordnet")
    monkeypatch.setattr(nltk.data, "path", [str(empty)])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _by_name(checks):
    return {c["name"]: c for c in checks}


def test_missing_data_exit_1_with_both_fixes(bare, cli):
    code, out, err = cli("doctor")
    assert code == 1, out + err
    lines = out.splitlines()
    fm = lines.index(next(ln for ln in lines if "fashion-mnist" in ln))
    assert "MISSING" in lines[fm]
    assert "fix: root: apt-get install dataset-fashion-mnist" in lines[fm + 1]
    assert F.FETCH_COMMAND in lines[fm + 1]
    wn = lines.index(next(ln for ln in lines if " wordnet " in ln))
    assert "MISSING" in lines[wn] and "GRANULARITY_WORDNET" in lines[wn]
    assert "apt-get install wordnet-base wordnet-sense-index" in lines[wn + 1]
    assert "-m nltk.downloader wordnet" in lines[wn + 1]
    assert out.rstrip().endswith("not ready: missing fashion-mnist, wordnet (run the fix lines above)")

    code, out, _ = cli("doctor", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    checks = _by_name(doc["checks"])
    assert not checks["fashion-mnist"]["ok"] and checks["fashion-mnist"]["required"]
    assert "dataset-fashion-mnist" in checks["fashion-mnist"]["fix"]
    assert not checks["wordnet"]["ok"] and "nltk.downloader" in checks["wordnet"]["fix"]
    assert checks["run folder"]["ok"] and checks["torch"]["ok"]
    assert {c["part"] for c in doc["checks"]} == set(D.PARTS)


def test_everything_found_exit_0(bare, cli, monkeypatch):
    write_fake_fmnist(bare / "fm" / "fashion-mnist")
    monkeypatch.setenv("GRANULARITY_DATA", str(bare / "fm"))
    nltk_layout = bare / "nltk_data" / "corpora" / "wordnet"
    nltk_layout.mkdir(parents=True)
    for f in W._REQUIRED:  # presence is what the doctor checks; content is checked on first use
        (nltk_layout / f).write_text("")
    monkeypatch.setenv("GRANULARITY_WORDNET", str(bare / "nltk_data"))
    code, out, err = cli("doctor", "--json")
    checks = _by_name(json.loads(out)["checks"])
    assert code == 0, out + err
    assert checks["fashion-mnist"]["found"] == f"found in {bare / 'fm' / 'fashion-mnist'}"
    assert checks["wordnet"]["found"] == f"GRANULARITY_WORDNET: {nltk_layout}"


def test_wordnet_from_nltk_data_path(bare, monkeypatch):
    import nltk.data

    monkeypatch.delenv("GRANULARITY_WORDNET")
    corpora = bare / "nltk_home" / "corpora"
    (corpora / "wordnet").mkdir(parents=True)
    for f in W._REQUIRED:
        (corpora / "wordnet" / f).write_text("")
    monkeypatch.setattr(nltk.data, "path", [str(bare / "nltk_home")])
    assert D.check_wordnet().found == f"NLTK data package: {corpora / 'wordnet'}"


def test_run_folder_not_writable(bare, cli):
    (bare / "a-file").write_text("x")
    code, out, _ = cli("doctor", "--json", "--runs", str(bare / "a-file" / "runs"))
    check = _by_name(json.loads(out)["checks"])["run folder"]
    assert code == 1 and not check["ok"] and "is not a folder" in check["found"]
    assert "--out" in check["fix"]


def test_optional_pieces_missing_do_not_fail(monkeypatch):
    monkeypatch.setattr(D, "_version", lambda dist: None)
    checks = _by_name([c.as_dict() for c in D.check_extras()])
    assert not checks["ray"]["ok"] and not checks["ray"]["required"]
    assert checks["ray"]["fix"].endswith("-m pip install 'ray[default]>=2.9'")
    assert checks["test tools"]["fix"].endswith("-m pip install pytest hypothesis pytest-timeout")
    assert D.exit_code(D.check_extras()) == 0


@pytest.mark.parametrize(
    ("flags", "native"),
    [({"avx2", "avx512_bf16"}, True), ({"amx_bf16"}, True), ({"avx2", "fma"}, False)],
)
def test_cpu_bf16_from_flags(flags, native, monkeypatch):
    monkeypatch.setattr(D.platform, "machine", lambda: "x86_64")
    ok, text = D.cpu_bf16(flags)
    assert ok is native and ("native" if native else "emulated") in text

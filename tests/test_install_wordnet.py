"""WordNet 3.0 by either route (Debian apt package or NLTK's data package / a folder named by
GRANULARITY_WORDNET) gives the identical ImageNet-1k hierarchy; "not found" names both routes.

The NLTK route is laid out from the Debian files as NLTK's own package is (``wordnet.zip`` with a
``wordnet/`` folder inside, below ``<nltk data folder>/corpora``); nothing is downloaded.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from granularity.errors import GranularityError
from granularity.hierarchy import wordnet_db as W
from granularity.hierarchy.wordnet import imagenet1k_hierarchy

DEBIAN = Path("/usr/share/wordnet")
needs_debian = pytest.mark.skipif(
    not all((DEBIAN / f).is_file() for f in W._REQUIRED),
    reason=f"the Debian WordNet files are the test's source ({W.WORDNET_FIX})",
)
BOTH_ROUTES = r"apt-get install wordnet-base wordnet-sense-index.*python -m nltk\.downloader wordnet"


def nltk_zip(nltk_data: Path, *, drop: str | None = None) -> Path:
    """``<nltk_data>/corpora/wordnet.zip`` as NLTK ships it, made from the Debian files."""
    corpora = nltk_data / "corpora"
    corpora.mkdir(parents=True)
    out = corpora / "wordnet.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("wordnet/", "")
        for f in W._REQUIRED + W._OPTIONAL:
            if f != drop and (DEBIAN / f).is_file():
                zf.write(DEBIAN / f, f"wordnet/{f}")
        zf.writestr("wordnet/lexnames", W.lexnames_text())
        zf.writestr("wordnet/LICENSE", "WordNet 3.0 license\n")
    return out


@pytest.fixture()
def no_debian(monkeypatch, tmp_path):
    """The machine as without root: no /usr/share/wordnet, no env var, NLTK path under tmp."""
    import nltk.data

    for var in W.WORDNET_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(W, "DEBIAN_WORDNET_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])
    return tmp_path / "nltk_data"


def imagenet_hash(cache: Path, source: Path | None = None) -> str:
    W.ensure_wordnet(cache, source=source)
    return imagenet1k_hierarchy(wn=W.wordnet_reader(cache)).content_hash


@needs_debian
@pytest.mark.slow
def test_debian_nltk_and_env_routes_give_the_same_imagenet_hierarchy(tmp_path, monkeypatch, no_debian):
    debian_hash = imagenet_hash(tmp_path / "c-debian", source=DEBIAN)

    nltk_zip(no_debian)
    assert W.find_wordnet_source() == ("nltk", no_debian / "corpora" / "wordnet.zip")
    nltk_hash = imagenet_hash(tmp_path / "c-nltk")

    # unzipped as `nltk.download` leaves it (corpora/wordnet/), named by GRANULARITY_WORDNET
    other = tmp_path / "mine"
    with zipfile.ZipFile(no_debian / "corpora" / "wordnet.zip") as zf:
        zf.extractall(other / "corpora")
    monkeypatch.setenv("GRANULARITY_WORDNET", str(other))
    assert W.find_wordnet_source() == ("env", other / "corpora" / "wordnet")
    env_hash = imagenet_hash(tmp_path / "c-env")

    assert debian_hash == nltk_hash == env_hash
    # and the copies really came from different places: the cached files are byte-identical
    for f in ("data.noun", "index.noun"):
        a = (tmp_path / "c-debian/nltk_data/corpora/wordnet" / f).read_bytes()
        assert a == (tmp_path / "c-nltk/nltk_data/corpora/wordnet" / f).read_bytes()


@needs_debian
def test_debian_route_found_first_without_env(monkeypatch):
    for var in W.WORDNET_ENV:
        monkeypatch.delenv(var, raising=False)
    assert W.find_wordnet_source() == ("debian", DEBIAN)


def test_not_found_names_both_routes(no_debian, tmp_path, monkeypatch):
    with pytest.raises(GranularityError, match=BOTH_ROUTES):
        W.find_wordnet_source()
    with pytest.raises(GranularityError, match=BOTH_ROUTES):
        W.ensure_wordnet(tmp_path / "cache")
    monkeypatch.setenv("GRANULARITY_WORDNET", str(tmp_path / "empty"))
    with pytest.raises(GranularityError, match=r"named by GRANULARITY_WORDNET.*" + BOTH_ROUTES):
        W.find_wordnet_source()


@needs_debian
def test_env_var_is_the_only_place_looked_at(tmp_path, monkeypatch):
    # set but wrong: an error, not a silent fall back to the Debian files
    monkeypatch.setenv("GRANULARITY_WORDNET", str(tmp_path / "empty"))
    with pytest.raises(GranularityError, match="not found in"):
        W.find_wordnet_source()


@needs_debian
def test_incomplete_zip_and_other_version_are_refused(tmp_path, no_debian):
    nltk_zip(no_debian, drop="data.noun")
    with pytest.raises(GranularityError, match=BOTH_ROUTES):
        W.find_wordnet_source()  # an incomplete zip is not a source
    folder = tmp_path / "wn31"
    folder.mkdir()
    for f in W._REQUIRED:
        shutil.copyfile(DEBIAN / f, folder / f)
    text = (folder / "data.noun").read_bytes().replace(b"WordNet 3.0 ", b"WordNet 3.1 ")
    (folder / "data.noun").write_bytes(text)
    with pytest.raises(GranularityError, match="is not WordNet 3.0"):
        W.ensure_wordnet(tmp_path / "cache", source=folder)

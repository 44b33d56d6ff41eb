import os
from pathlib import Path

import pytest

WORDNET_OK = all(Path("/usr/share/wordnet", f).is_file() for f in ("data.noun", "index.noun"))


@pytest.fixture(scope="session")
def wn_cache(tmp_path_factory):
    """A private cache folder with the Debian WordNet copied in once per session."""
    if not WORDNET_OK and not os.environ.get("GRANULARITY_WORDNET_DIR"):
        pytest.skip("WordNet 3.0 not installed (apt-get install wordnet-base wordnet-sense-index)")
    from granularity.hierarchy.wordnet import ensure_wordnet

    cache = tmp_path_factory.mktemp("gcache")
    ensure_wordnet(cache)
    return cache


@pytest.fixture(scope="session")
def wn(wn_cache):
    from granularity.hierarchy.wordnet import wordnet_reader

    return wordnet_reader(wn_cache)


@pytest.fixture()
def use_cache(wn_cache, monkeypatch):
    monkeypatch.setenv("GRANULARITY_CACHE", str(wn_cache))
    return wn_cache

import pytest


@pytest.fixture(scope="session")
def wn_cache(tmp_path_factory):
    """A private cache folder with WordNet 3.0 (either route) copied in once per session."""
    from granularity.hierarchy.wordnet_db import ensure_wordnet, wordnet_missing_reason

    if reason := wordnet_missing_reason():  # either route: Debian or NLTK's data package
        pytest.skip(reason)

    cache = tmp_path_factory.mktemp("gcache")
    ensure_wordnet(cache)
    return cache


@pytest.fixture(scope="session")
def wn(wn_cache):
    from granularity.hierarchy.wordnet_db import wordnet_reader

    return wordnet_reader(wn_cache)


@pytest.fixture()
def use_cache(wn_cache, monkeypatch):
    monkeypatch.setenv("GRANULARITY_CACHE", str(wn_cache))
    return wn_cache

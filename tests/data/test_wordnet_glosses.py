"""The WordNet noun-gloss data set: no lemma in any input, labels that follow WordNet at every
level, the class-size rule, stratified seeded splits, determinism across processes.

Needs the Debian WordNet 3.0 files. The first build reads all 82k noun synsets through NLTK
(~20 s, then cached on disk), hence ``slow``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from granularity.errors import DataError, GranularityError

WORDNET_OK = all(Path("/usr/share/wordnet", f).is_file() for f in ("data.noun", "index.noun"))
pytestmark = [
    pytest.mark.skipif(not WORDNET_OK and not os.environ.get("GRANULARITY_WORDNET_DIR"), reason="WordNet 3.0 not installed"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def table():
    from granularity.data.wordnet_glosses import build_table

    return build_table()


def _words(text: str) -> str:
    """Lowercased words joined by single spaces, padded with spaces (for substring tests)."""
    return " " + " ".join(re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)?", text.lower())) + " "


def test_no_lemma_name_of_the_synset_or_an_ancestor_in_any_input(table):
    # an independent check: the lemma's words (plural/possessive too) as consecutive words
    assert len(table.texts) == 79811
    leaks = []
    for s, text in zip(table.synsets, table.texts):
        words = _words(text)
        for node in table.paths[s]:
            for lemma in table.lemmas[node]:
                phrase = " ".join(re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)?", lemma.lower().replace("_", " ")))
                if phrase and any(f" {phrase}{end} " in words for end in ("", "s", "es", "'s")):
                    leaks.append((s, lemma, text))
    assert leaks == []


def test_no_lemma_by_a_regex_check_on_a_sample(table):
    rng = np.random.default_rng(0)
    for i in rng.choice(len(table.texts), 3000, replace=False):
        s, text = table.synsets[i], table.texts[i]
        for node in table.paths[s]:
            for lemma in table.lemmas[node]:
                # words as documented: letters/digits with inner apostrophes ("d'art" is one word)
                pat = r"(?<![\w'])" + r"[\s-]+".join(map(re.escape, re.split(r"[_\s-]+", lemma))) + r"(?:s|es)?(?![\w'])"
                assert re.search(pat, text, re.IGNORECASE) is None, (s, lemma, text)


def test_scrubbing_is_measured_and_can_be_turned_off(table):
    from granularity.data.wordnet_glosses import build_table

    st = table.stats["lemma_scrub"]
    # the raw glosses do leak: the synset's own lemma (its examples) and its hypernyms' names
    assert 0.10 < st["fraction_with_own_lemma"] < 0.20
    assert 0.70 < st["fraction_with_ancestor_lemma"] < 0.90
    assert st["occurrences_removed"] >= st["glosses_with_ancestor_lemma"]
    # the counts are those of the raw texts: recount the own-lemma case independently
    own = sum(
        any(f" {' '.join(re.findall(r'[a-z0-9]+', lem.lower()))}{e} " in _words(raw) for lem in table.lemmas[s] for e in ("", "s", "es"))
        for s, raw in zip(table.synsets[:5000], table.raw_texts[:5000])
    )
    from granularity.data.wordnet_glosses import lemma_spans, lemma_words

    mine = sum(bool(lemma_spans(raw, {lemma_words(lem) for lem in table.lemmas[s]})) for s, raw in zip(table.synsets[:5000], table.raw_texts[:5000]))
    assert abs(own - mine) <= 0.02 * 5000  # tokenisation details (apostrophes, unicode) differ slightly
    raw = build_table({"scrub_lemmas": False})
    assert raw.texts == raw.raw_texts == table.raw_texts
    assert raw.stats["lemma_scrub"]["occurrences_removed"] == 0


def test_labels_follow_wordnet_at_every_level(table):
    from granularity.data.wordnet_glosses import OTHER
    from granularity.hierarchy.wordnet import ancestors, wnid_of
    from granularity.hierarchy.wordnet_db import wordnet_reader

    h = table.hierarchy
    wn = wordnet_reader()
    rng = np.random.default_rng(1)
    for i in rng.choice(len(table.synsets), 400, replace=False):
        s = table.synsets[i]
        wn_path = ancestors(wnid_of(wn.synset(s)), "longest", wn)  # NLTK, root -> synset
        leaf = table.leaf_names[table.leaf[i]]
        for lv in range(1, h.depth + 1):
            node = h.relabel_names([leaf], lv)[0]
            if node.endswith(OTHER):  # the rest of a node: its parent is on the path, its own child is small or absent
                assert wn_path[h.node_depth(node) - 1] == node[: -len(OTHER)]
            elif h.node_depth(node) == lv:
                assert wn_path[lv] == node
            else:  # a leaf above this level keeps its label
                assert node == leaf and h.node_depth(leaf) < lv


def test_every_class_at_every_level_has_min_count_samples(table):
    h = table.hierarchy
    assert h.level_sizes() == [1, 2, 11, 53, 134, 254, 388, 508]
    for lv in range(1, h.depth + 1):
        counts = np.bincount(h.relabel(table.leaf, lv), minlength=h.num_classes(lv))
        assert counts.min() >= 50, lv
    # class counts recomputed from each sample's WordNet path and leaf name (no hierarchy object)
    for lv in (3, 5, 7):
        names = Counter()
        for i, s in enumerate(table.synsets):
            leaf, path = table.leaf_names[table.leaf[i]], table.paths[s]
            if leaf.endswith("/other"):  # the leaf sits one below its node
                d = path.index(leaf[: -len("/other")]) + 1
                names[path[lv] if lv < d else leaf] += 1
            else:
                d = path.index(leaf)
                names[path[lv] if lv <= d else leaf] += 1
        assert len(names) == h.num_classes(lv)
        assert sorted(names.values()) == sorted(np.bincount(h.relabel(table.leaf, lv)).tolist())


def test_dropped_samples_follow_the_rule(table):
    from granularity.data.wordnet_glosses import assign_leaves

    # a toy tree: a -> {b (3 samples), c (1 sample)}, a's own gloss; min_count 3
    paths = [["r", "a", "b", f"b{i}"] for i in range(3)] + [["r", "a", "c", "c0"], ["r", "a"]]
    out = assign_leaves(paths, min_depth=1, max_depth=3, min_count=3)
    assert out[:3] == [["a", "b"]] * 3  # b has no child with 3 samples: a leaf at depth 2
    assert out[3:] == [None, None]  # the rest of a (c0 and a itself) is 2 < 3: dropped
    out = assign_leaves(paths, min_depth=1, max_depth=3, min_count=2)
    assert out[3:] == [["a", "a/other"]] * 2
    assert table.stats["n_dropped"] == 82115 - 79811


def test_splits_are_stratified_disjoint_and_seeded(table):
    from granularity.data.wordnet_glosses import stratified_split

    split = table.split
    for c in range(len(table.leaf_names)):
        parts = np.bincount(split[table.leaf == c], minlength=3)
        n = parts.sum()
        assert parts[2] == max(1, round(0.2 * n)) and parts[1] == max(1, round(0.1 * n)) and parts[0] >= 1
    again = stratified_split(table.leaf, 0.1, 0.2, seed=0)
    np.testing.assert_array_equal(again, split)
    assert (stratified_split(table.leaf, 0.1, 0.2, seed=1) != split).mean() > 0.2


def test_dataset_splits_and_eval_split(table):
    from granularity.data import load_dataset

    ds = load_dataset("wordnet-glosses")
    assert ds.input_kind == "tokens" and ds.train.x.dtype.is_floating_point is False
    assert len(ds.train) == int((table.split == 0).sum()) and len(ds.test) == int((table.split == 2).sum())
    val = load_dataset("wordnet-glosses", eval_split="val")
    assert len(val.test) == int((table.split == 1).sum())
    np.testing.assert_array_equal(val.train.x.numpy(), ds.train.x.numpy())
    assert ds.hierarchy.content_hash == table.hierarchy.content_hash


def test_the_same_data_in_a_fresh_process_with_another_hash_seed(table):
    from granularity.data.wordnet_glosses import load_wordnet_glosses

    ds = load_wordnet_glosses()
    digest = hashlib.sha256(ds.train.x.numpy().tobytes() + ds.test.y.numpy().tobytes()).hexdigest()
    code = (
        "import hashlib; from granularity.data.wordnet_glosses import load_wordnet_glosses as f; d=f(); "
        "print(hashlib.sha256(d.train.x.numpy().tobytes()+d.test.y.numpy().tobytes()).hexdigest(), d.hierarchy.content_hash)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [digest, ds.hierarchy.content_hash]


def test_option_errors():
    from granularity.data import load_dataset
    from granularity.data.wordnet_glosses import load_wordnet_glosses

    with pytest.raises(GranularityError, match="Unknown option 'min_cout' for data set 'wordnet-glosses' \\(did you mean 'min_count'\\?\\)"):
        load_dataset("wordnet-glosses", min_cout=3)
    with pytest.raises(GranularityError, match="max_depth \\(2\\) must be >= min_depth \\(3\\)"):
        load_wordnet_glosses(min_depth=3, max_depth=2)
    with pytest.raises(GranularityError, match="'min_count'"):
        load_wordnet_glosses(min_count=1)
    with pytest.raises(DataError, match="has no data.noun"):
        load_wordnet_glosses(root="/nonexistent/wordnet")

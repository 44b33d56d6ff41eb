"""WordNet 3.0 noun glosses: a deep real label hierarchy that installs offline.

One sample per noun synset: the input is its **gloss** (the definition, then the example
sentences), the labels are its **hypernym path**, so every WordNet depth is a granularity level
(root ``entity.n.01`` = level 0). The database comes from Debian's ``wordnet-base`` (read with
NLTK through :mod:`granularity.hierarchy.wordnet_db`); each synset has one parent, chosen by the
project's deterministic rule (``policy``, default ``"longest"``: the most specific hypernym).

Leakage. Lemma names are never part of the input: they *are* the labels. Glosses often
contain them anyway (``"the dog barked all night"`` in the gloss of *dog*; definitions name
their hypernym: *tabby* is ``"a cat with ..."``). With ``scrub_lemmas=True`` (default) every
lemma name of the synset and of all its ancestors on the chosen path is deleted from its gloss
as a whole word or phrase (consecutive words, whatever the punctuation between them),
case-insensitively, including plural and possessive forms (``cat``, ``cats``, ``cat's``),
repeatedly (a deletion can join two words into another lemma). Not caught: irregular or inner
plurals (``objets d'art``) and a lemma glued to another word by an apostrophe (``d'art``). How often that happened is
recorded in ``info["lemma_scrub"]``.

Classes (the documented rule). Samples are the synsets at depth ``>= min_depth``. Top-down,
starting from their ancestors at depth ``min_depth`` (which need ``min_count`` samples, else
their samples are dropped), a class node ``c`` at depth ``d < max_depth`` is split into its
children that hold at least ``min_count`` samples (counting whole subtrees); the rest of its
samples (those under smaller children, and ``c``'s own gloss) become the leaf ``c/other`` at
depth ``d + 1`` when they are at least ``min_count``, and are dropped otherwise; a node with no
such child stays a leaf. Nodes at ``max_depth`` are leaves. So every class at every level has
at least ``min_count`` samples, leaves sit at depths ``min_depth .. max_depth`` and, as
everywhere in this project, a leaf above a level keeps its own label there.

Splits: stratified by leaf, seeded by ``split_seed`` (train / validation / test, fractions
``1 - val - test`` / ``val_fraction`` / ``test_fraction``); the engine trains on ``train`` and
evaluates on ``test``, or on the validation split with ``eval_split="val"`` (for choosing
settings without touching the test split). Inputs are token ids of
:class:`granularity.data.text.HashTokenizer` (``int64 (N, L)``, padded with 0), marked
``info["input_kind"] = "tokens"`` so the engine neither normalises nor augments them.

The NLTK pass over the 82k noun synsets takes ~20 s; its result (names, parents, lemmas,
glosses) is cached in ``<cache>/wordnet-glosses/`` keyed by the content hash of ``data.noun``
and the parent policy, so later loads take a few seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from granularity.data.base import RealDataset, Split
from granularity.data.text import HashTokenizer
from granularity.errors import DataError
from granularity.hierarchy.structure import LabelHierarchy
from granularity.utils.config import Config
from granularity.utils.io import write_bytes_atomic

NAME = "wordnet-glosses"
VERSION = "wordnet-3.0-glosses-1"
ROOT = "entity.n.01"
OTHER = "/other"  # suffix of the leaf holding a node's samples outside its large children
_RECORDS_FORMAT = 1


class GlossOptions(Config):
    """Options of :func:`load_wordnet_glosses` (validated; unknown keys are errors)."""

    min_depth: int = Field(2, ge=1)  # shallowest class level: samples are synsets at depth >= it
    max_depth: int = Field(7, ge=1)  # deepest class level (the leaves)
    min_count: int = Field(50, ge=2)  # samples every class needs at every level (see the rule)
    policy: Literal["longest", "shortest", "alphabetical"] = "longest"  # one parent per synset
    examples: bool = True  # append the example sentences to the definition
    scrub_lemmas: bool = True  # delete lemma names of the synset and its ancestors from the gloss
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    eval_split: Literal["test", "val"] = "test"  # what the data set's ``test`` split holds
    buckets: int = Field(2**17, ge=2)  # tokenizer: ids 1..buckets-1 (0 = padding)
    ngrams: int = Field(2, ge=1)
    max_words: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _check(self) -> GlossOptions:
        if self.max_depth < self.min_depth:
            raise ValueError(f"max_depth ({self.max_depth}) must be >= min_depth ({self.min_depth})")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must leave at least 10% for training; got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        if self.eval_split == "val" and self.val_fraction == 0:
            raise ValueError("eval_split 'val' needs val_fraction > 0")
        return self

    def tokenizer(self) -> HashTokenizer:
        return HashTokenizer(self.buckets, self.ngrams, self.max_words)


# --------------------------------------------------------------------------------------------
# WordNet records (NLTK pass, cached on disk)
# --------------------------------------------------------------------------------------------
def read_records(policy: str = "longest", root: Path | str | None = None) -> list[list[Any]]:
    """:func:`granularity.hierarchy.wordnet.noun_records` (every noun synset: name, parent by
    ``policy``, lemmas, definition, examples), cached on disk by the hash of ``data.noun``."""
    from granularity.hierarchy.wordnet import noun_records
    from granularity.hierarchy.wordnet_db import cache_dir, wordnet_database

    folder = wordnet_database(root)
    digest = hashlib.sha256((folder / "data.noun").read_bytes()).hexdigest()[:16]
    path = cache_dir() / "wordnet-glosses" / f"records-v{_RECORDS_FORMAT}-{policy}-{digest}.json.gz"
    if path.is_file():
        try:
            return json.loads(gzip.decompress(path.read_bytes()))
        except (OSError, ValueError, EOFError):
            pass  # a damaged cache file is rebuilt
    records = noun_records(policy)
    data = gzip.compress(json.dumps(records).encode("utf-8"), mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, lambda fh: fh.write(data))
    return records


# --------------------------------------------------------------------------------------------
# Classes: the top-down rule
# --------------------------------------------------------------------------------------------
def synset_paths(records: list[list[Any]]) -> dict[str, list[str]]:
    """Synset name -> names from the root down to the synset along the chosen parents."""
    parent = {r[0]: r[1] for r in records}
    paths: dict[str, list[str]] = {}
    for name in parent:
        chain = []
        node = name
        while node is not None and node not in paths:
            chain.append(node)
            node = parent[node]
        prefix = paths[node] if node is not None else []
        for n in reversed(chain):
            prefix = prefix + [n]
            paths[n] = prefix
    return paths


def assign_leaves(paths: list[list[str]], min_depth: int, max_depth: int, min_count: int) -> list[list[str] | None]:
    """Class path (nodes at depths 1..leaf depth, root excluded) of every sample by the
    module's top-down rule, or ``None`` for a dropped sample. ``paths[i]`` runs from the root
    to sample ``i``'s synset."""
    out: list[list[str] | None] = [None] * len(paths)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        if len(p) - 1 >= min_depth:
            groups[p[min_depth]].append(i)
    stack = [(c, min_depth, idx) for c, idx in sorted(groups.items())]
    while stack:
        node, d, idx = stack.pop()
        if len(idx) < min_count:
            continue  # too small a class at its top level: dropped
        prefix = paths[idx[0]][1 : d + 1]
        if d >= max_depth:
            for i in idx:
                out[i] = prefix
            continue
        children: dict[str, list[int]] = defaultdict(list)
        rest = []
        for i in idx:
            (children[paths[i][d + 1]] if len(paths[i]) - 1 > d else rest).append(i)
        big = {c: v for c, v in sorted(children.items()) if len(v) >= min_count}
        if not big:
            for i in idx:
                out[i] = prefix
            continue
        rest += [i for c, v in children.items() if c not in big for i in v]
        stack += [(c, d + 1, v) for c, v in big.items()]
        if len(rest) >= min_count:
            for i in rest:
                out[i] = prefix + [node + OTHER]
    return out


# --------------------------------------------------------------------------------------------
# Lemma scrubbing
# --------------------------------------------------------------------------------------------
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)?")  # the tokenizer's words (see data/text.py)


def lemma_words(lemma: str) -> tuple[str, ...]:
    """A WordNet lemma name (``_`` for spaces) as a tuple of lowercased words."""
    return tuple(w.lower().replace("\u2019", "'") for w in _WORD.findall(lemma.replace("_", " ")))


def _forms(word: str) -> set[str]:
    """The lemma words a text word can stand for: itself, and without a plural or
    possessive ending (``cats`` / ``cat's`` / ``glasses`` -> also ``cat`` / ``glass``)."""
    out = {word}
    for end in ("'s", "es", "s"):
        if word.endswith(end) and len(word) > len(end):
            out.add(word[: -len(end)])
    return out


def lemma_spans(text: str, phrases: set[tuple[str, ...]]) -> list[tuple[int, int]]:
    """Character spans of ``text`` where one of ``phrases`` (tuples of lowercased words)
    occurs as consecutive words, case-insensitively; the last word may carry a plural or
    possessive ending. Overlapping matches are merged."""
    if not phrases:
        return []
    toks = [(m.start(), m.end(), m.group().lower().replace("\u2019", "'")) for m in _WORD.finditer(text)]
    lengths = sorted({len(p) for p in phrases}, reverse=True)
    spans: list[tuple[int, int]] = []
    for i in range(len(toks)):
        for k in lengths:
            if i + k > len(toks):
                continue
            head = tuple(t[2] for t in toks[i : i + k - 1])
            if any(head + (f,) in phrases for f in _forms(toks[i + k - 1][2])):
                spans.append((toks[i][0], toks[i + k - 1][1]))
                break
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def scrub(text: str, phrases: set[tuple[str, ...]]) -> tuple[str, int]:
    """``text`` with every occurrence of ``phrases`` deleted (spaces tidied); and their count."""
    spans = lemma_spans(text, phrases)
    if not spans:
        return text, 0
    pieces, pos = [], 0
    for a, b in spans:
        pieces.append(text[pos:a])
        pos = b
    pieces.append(text[pos:])
    return re.sub(r"\s+", " ", " ".join(pieces)).strip(), len(spans)


def gloss_text(definition: str, examples: list[str], with_examples: bool) -> str:
    parts = [definition] + ([f'"{e}"' for e in examples] if with_examples else [])
    return "; ".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------
# The table and the data set
# --------------------------------------------------------------------------------------------
@dataclass
class GlossTable:
    """Everything behind the data set, for inspection and tests (one row per kept sample)."""

    synsets: list[str]  # the sample's synset
    texts: list[str]  # the model's input text (scrubbed unless scrub_lemmas=False)
    raw_texts: list[str]  # the gloss before scrubbing
    leaf: np.ndarray  # int64 leaf label
    split: np.ndarray  # int8: 0 train, 1 validation, 2 test
    leaf_names: list[str]
    hierarchy: LabelHierarchy
    paths: dict[str, list[str]]  # synset -> WordNet path (root .. synset) by the parent policy
    lemmas: dict[str, list[str]]  # synset -> lemma names
    stats: dict[str, Any] = field(default_factory=dict)


def build_table(options: GlossOptions | dict[str, Any] | None = None, root: Path | str | None = None) -> GlossTable:
    """The samples, labels, splits and hierarchy for ``options`` (see the module docstring)."""
    opt = options if isinstance(options, GlossOptions) else GlossOptions.build(options or {}, where="wordnet-glosses")
    return _build_table(opt.model_dump_json(), None if root is None else str(root))


@lru_cache(maxsize=2)
def _build_table(options_json: str, root: str | None) -> GlossTable:
    opt = GlossOptions.model_validate_json(options_json)
    records = read_records(opt.policy, root)
    by_name = {r[0]: r for r in records}
    paths = synset_paths(records)
    names = [r[0] for r in records]
    assigned = assign_leaves([paths[n] for n in names], opt.min_depth, opt.max_depth, opt.min_count)
    keep = [i for i, a in enumerate(assigned) if a is not None]
    if not keep:
        raise DataError(
            f"No WordNet gloss class has min_count={opt.min_count} samples at depth {opt.min_depth}; lower min_count."
        )
    leaf_paths = {tuple(assigned[i]) for i in keep}
    leaf_names = [p[-1] for p in sorted(leaf_paths)]
    index = {n: i for i, n in enumerate(leaf_names)}
    parent = {}
    for p in leaf_paths:
        for child, par in zip(p, (ROOT,) + p[:-1]):
            parent[child] = par
    titles = {n: _title(n, by_name) for n in list(parent) + [ROOT]}
    hierarchy = LabelHierarchy(
        parent, root=ROOT, leaves=leaf_names, name=NAME, titles=titles,
        meta={"source": "wordnet-3.0 noun glosses", **opt.model_dump(include={"policy", "min_depth", "max_depth", "min_count"})},
    )
    synsets = [names[i] for i in keep]
    raw = [gloss_text(by_name[n][3], by_name[n][4], opt.examples) for n in synsets]
    lemmas = {n: list(by_name[n][2]) for p in (paths[s] for s in synsets) for n in p}
    texts, scrub_stats = _scrub_all(synsets, raw, paths, lemmas, opt.scrub_lemmas)
    leaf = np.array([index[assigned[i][-1]] for i in keep], dtype=np.int64)
    split = stratified_split(leaf, opt.val_fraction, opt.test_fraction, opt.split_seed)
    stats = {"n_synsets": len(records), "n_samples": len(keep), "n_dropped": len(records) - len(keep),
             "n_below_min_depth": sum(len(paths[n]) - 1 < opt.min_depth for n in names), "lemma_scrub": scrub_stats}
    return GlossTable(synsets, texts, raw, leaf, split, leaf_names, hierarchy, {s: paths[s] for s in synsets}, lemmas, stats)


def _title(node: str, by_name: dict[str, list[Any]]) -> str:
    if node.endswith(OTHER):
        return f"other {_title(node[: -len(OTHER)], by_name)}"
    return by_name[node][2][0].replace("_", " ")


def _scrub_all(synsets, raw, paths, lemmas, enabled: bool) -> tuple[list[str], dict[str, Any]]:
    """Scrubbed texts and how often the raw glosses held a lemma name of the synset itself
    and of an ancestor (counted whether or not scrubbing is enabled)."""
    phrases = {n: {lemma_words(lem) for lem in lems} - {()} for n, lems in lemmas.items()}
    anc_of: dict[str, set] = {}  # per parent: siblings share their ancestors
    texts, own_hits, anc_hits, removed = [], 0, 0, 0
    for s, text in zip(synsets, raw):
        own = phrases[s]
        par = paths[s][-2]
        if par not in anc_of:
            anc_of[par] = set().union(*(phrases[a] for a in paths[s][:-1]))
        anc = anc_of[par]
        own_hits += bool(lemma_spans(text, own))
        anc_hits += bool(lemma_spans(text, anc))
        while enabled:  # until none is left: a deletion can join two words into a lemma
            text, n = scrub(text, own | anc)  # ("freshwater food fish" -> "freshwater fish")
            removed += n
            if not n:
                break
        texts.append(text)
    n = max(len(raw), 1)
    return texts, {
        "enabled": enabled,
        "glosses_with_own_lemma": own_hits, "fraction_with_own_lemma": own_hits / n,
        "glosses_with_ancestor_lemma": anc_hits, "fraction_with_ancestor_lemma": anc_hits / n,
        "occurrences_removed": removed,
        "empty_after_scrub": sum(not t.strip() for t in texts),
    }


def stratified_split(leaf: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """``int8`` split per sample (0 train, 1 val, 2 test): per class, a seeded shuffle, the
    first ``round(test_fraction * n)`` to test and the next ``round(val_fraction * n)`` to
    validation (at least one each when the fraction is > 0 and the class has 3+ samples)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(leaf), dtype=np.int8)
    for c in np.unique(leaf):
        members = rng.permutation(np.flatnonzero(leaf == c))
        n = len(members)
        n_test = max(1, round(test_fraction * n)) if n >= 3 else 0
        n_val = max(1, round(val_fraction * n)) if n >= 3 and val_fraction > 0 else 0
        out[members[:n_test]] = 2
        out[members[n_test : n_test + n_val]] = 1
    return out


def load_wordnet_glosses(root: Path | str | None = None, **options: Any) -> RealDataset:
    """The WordNet noun-gloss data set (see the module docstring for the rule and options).

    Parameters
    ----------
    root : path, optional
        Folder of the WordNet 3.0 database (default ``$GRANULARITY_WORDNET_DIR`` or
        ``/usr/share/wordnet``); used when the cache has no copy yet.
    **options
        Fields of :class:`GlossOptions`: ``min_depth`` (2), ``max_depth`` (7), ``min_count``
        (50), ``policy``, ``examples``, ``scrub_lemmas``, ``val_fraction`` (0.1),
        ``test_fraction`` (0.2), ``split_seed``, ``eval_split`` (``"test"``/``"val"``),
        ``buckets``, ``ngrams``, ``max_words``.
    """
    opt = GlossOptions.build(options, where="wordnet-glosses")
    table = build_table(opt, root)
    tok = opt.tokenizer()
    x = torch.from_numpy(tok.encode(table.texts))
    y = torch.from_numpy(table.leaf)
    evaluated = 2 if opt.eval_split == "test" else 1
    tr = torch.from_numpy(np.flatnonzero(table.split == 0))
    te = torch.from_numpy(np.flatnonzero(table.split == evaluated))
    hier = table.hierarchy
    return RealDataset(
        name=NAME, version=VERSION,
        train=Split(x[tr], y[tr]), test=Split(x[te], y[te]),
        leaf_names=list(table.leaf_names), hierarchy_factory=lambda: hier,
        info={"input_kind": "tokens", "tokenizer": tok.to_dict(), "options": opt.to_dict(),
              "split_sizes": {k: int((table.split == v).sum()) for k, v in (("train", 0), ("val", 1), ("test", 2))},
              **table.stats},
        _hierarchy=hier,
    )


def _signature() -> inspect.Signature:
    """``root`` plus every :class:`GlossOptions` field as a keyword: the registry and the
    command line validate options against the loader's signature."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("root", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
    params += [inspect.Parameter(n, kw, default=f.default) for n, f in GlossOptions.model_fields.items()]
    return inspect.Signature(params, return_annotation=RealDataset)


load_wordnet_glosses.__signature__ = _signature()  # type: ignore[attr-defined]


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m granularity.data.wordnet_glosses
    ds = load_wordnet_glosses()
    print(ds, ds.hierarchy.level_sizes(), json.dumps(ds.info["lemma_scrub"]), file=sys.stdout)

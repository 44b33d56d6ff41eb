"""WordNet 3.0 hierarchies for ImageNet-style wnids, offline.

The database (where it is found, its cached copy, the NLTK reader) is
:mod:`granularity.hierarchy.wordnet_db`; this module turns its synsets into trees.

Tree policy. WordNet is a DAG: a synset may have several hypernyms (e.g. *dog* is both a
*canine* and a *domestic animal*). To get a tree each synset gets exactly one parent, chosen
per synset (not per leaf path, which could give a node two parents):

* ``"longest"`` (default): the hypernym farthest from the root (largest ``max_depth()``, ties
  broken by synset name): the most specific parent, which follows the taxonomy where WordNet
  also lists a functional shortcut (a tabby cat stays under *feline* -> *carnivore* ->
  *mammal* instead of jumping to *domestic animal*); it gives the longest paths.
* ``"shortest"``: the hypernym closest to the root (smallest ``min_depth()``, ties by name);
  following it from any synset gives one of its shortest paths to ``entity.n.01`` (but puts
  cats and dogs under *domestic animal*, outside *mammal*).
* ``"alphabetical"``: the hypernym with the smallest synset name.

Ties are broken by name on purpose: NLTK keeps a synset's pointers in a ``set``, so the order
of ``hypernyms()`` changes from one process to the next (string hashing is randomised) and
"the first hypernym" would give a different tree, and content hash, on every run.

Instance hypernyms count as hypernyms (as in ``Synset.hypernym_paths``).

Naming. Leaves (the class list) are named by their wnid, in class-index order; internal nodes
by the NLTK synset name (``fish.n.01``), so the two never collide even when a listed class is
itself the ancestor of another listed class (ImageNet-21k has such classes): then the class is
a leaf named by its wnid under the internal node of the same synset.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from granularity.errors import GranularityError, HierarchyError, param_error, suggest
from granularity.hierarchy.structure import LabelHierarchy
from granularity.hierarchy.wordnet_db import wordnet_reader

POLICIES = ("longest", "shortest", "alphabetical")
#: The canonical wnid: a part-of-speech letter and the 8-digit WordNet offset.
_WNID = re.compile(r"[nvasr][0-9]{8}")


def parse_wnid(wnid: str) -> tuple[str, int]:
    """``'n01440764'`` -> ``('n', 1440764)``; a one-line error for any other spelling."""
    s = str(wnid).strip()
    # exactly 8 digits: 'n1440764' or 'n001440764' would otherwise name the same synset as
    # 'n01440764' and become a second leaf of it
    if not _WNID.fullmatch(s):
        raise HierarchyError(
            f"Invalid wnid {s!r}; write it as 'n' and the 8-digit WordNet 3.0 offset, e.g. "
            "'n01440764' (exactly 8 digits, lower-case part-of-speech letter)."
        )
    return s[0], int(s[1:])


def synset_of(wnid: str, wn=None):
    """The NLTK synset of a wnid (WordNet 3.0 offsets)."""
    wn = wn or wordnet_reader()
    pos, offset = parse_wnid(wnid)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NLTK warns and returns None for a bad offset
            s = wn.synset_from_pos_and_offset(pos, offset)
    except Exception:  # noqa: BLE001 - NLTK raises WordNetError/ValueError/AttributeError
        s = None
    if s is None:
        raise HierarchyError(
            f"wnid {wnid!r} is not a WordNet 3.0 synset (no synset at offset {offset} for pos "
            f"{pos!r}); class lists must use WordNet 3.0 ids."
        )
    return s


def wnid_of(synset) -> str:
    return f"{synset.pos()}{synset.offset():08d}"


def _parent(synset, policy: str):
    hypers = synset.hypernyms() + synset.instance_hypernyms()
    if not hypers:
        return None
    if policy == "alphabetical":
        return min(hypers, key=lambda s: s.name())
    if policy == "shortest":
        return min(hypers, key=lambda s: (s.min_depth(), s.name()))
    return min(hypers, key=lambda s: (-s.max_depth(), s.name()))


def _policy_error(policy: Any) -> GranularityError:
    return GranularityError(
        f"The 'policy' parameter must be one of {', '.join(POLICIES)}. Got {policy!r} instead"
        f"{suggest(policy, POLICIES)}."
    )



def noun_records(policy: str = "longest") -> list[list[Any]]:
    """``[name, parent name or None, lemma names, definition, examples]`` of every noun synset,
    in WordNet file order, the parent by the project's rule ``policy`` (as in :func:`ancestors`):
    the one pass over the noun database the gloss data set reads."""
    if policy not in POLICIES:
        raise _policy_error(policy)
    out = []
    for s in wordnet_reader().all_synsets("n"):
        par = _parent(s, policy)
        out.append([s.name(), None if par is None else par.name(), list(s.lemma_names()),
                    s.definition() or "", list(s.examples())])
    return out


def ancestors(wnid: str, policy: str = "longest", wn=None) -> list[str]:
    """Synset names from the root (``entity.n.01``) down to the wnid's own synset."""
    if policy not in POLICIES:
        raise _policy_error(policy)
    s = synset_of(wnid, wn)
    path = [s.name()]
    while (s := _parent(s, policy)) is not None:
        path.append(s.name())
    return path[::-1]


def read_wnid_list(path: Path | str) -> list[str]:
    """Read a class list file: one wnid per line (extra columns after whitespace ignored)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GranularityError(f"Class list file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GranularityError(f"Class list file {str(path)!r} cannot be read ({exc}).") from None
    wnids = [ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not wnids:
        raise HierarchyError(f"Class list file {str(path)!r} has no wnids.")
    return wnids


def resource_wnids(name: str) -> list[str]:
    """A class list shipped with the package (``imagenet1k``, ``cifar100``)."""
    ref = resources.files("granularity") / "resources" / "wnids" / f"{name}.txt"
    return [ln.strip() for ln in ref.read_text().splitlines() if ln.strip()]


def resource_names(name: str) -> list[str]:
    ref = resources.files("granularity") / "resources" / "wnids" / f"{name}_names.txt"
    return [ln.strip() for ln in ref.read_text().splitlines() if ln.strip()]


def _lemma(synset) -> str:
    """A synset's display name: its first lemma, with spaces."""
    return synset.lemma_names()[0].replace("_", " ")


def _hypernym_chain(synset, wnid: str, policy: str) -> list:
    """The synsets above ``synset`` up to its WordNet root, nearest first, one parent each by
    ``policy``; a class that is itself a root is an error."""
    chain = []
    cur = _parent(synset, policy)
    while cur is not None:
        chain.append(cur)
        cur = _parent(cur, policy)
    if not chain:
        raise HierarchyError(f"wnid {wnid!r} ({synset.name()}) is a WordNet root; it cannot be a class.")
    return chain


def wordnet_hierarchy(
    wnids: Sequence[str],
    *,
    policy: str = "longest",
    name: str = "wordnet",
    titles: Sequence[str] | None = None,
    wn=None,
    meta: dict[str, Any] | None = None,
) -> LabelHierarchy:
    """The WordNet 3.0 hypernym tree above a class list of wnids.

    Parameters
    ----------
    wnids : sequence of str
        The class list in class-index order; leaf ``i`` is class ``i``.
    policy : {"longest", "shortest", "alphabetical"}
        How a synset with several hypernyms picks its one parent (see the module docstring).
    titles : sequence of str, optional
        Display names of the classes (default: the synset's first lemma).

    Returns
    -------
    LabelHierarchy
        Root ``entity.n.01`` (level 0); level ``l`` holds the synsets at depth ``l`` along the
        chosen paths; classes shallower than ``l`` keep their own label.
    """
    if policy not in POLICIES:
        raise _policy_error(policy)
    wnids = [str(w).strip() for w in wnids]
    if not wnids:
        raise HierarchyError("The class list is empty; give at least one wnid.")
    if titles is not None and len(titles) != len(wnids):
        raise param_error("titles", f"a list of {len(wnids)} names (one per wnid)", len(titles))
    wn = wn or wordnet_reader()
    parent: dict[str, str] = {}
    node_titles: dict[str, str] = {}
    roots: set[str] = set()
    for i, w in enumerate(wnids):
        s = synset_of(w, wn)
        if s.pos() != "n":
            raise HierarchyError(f"wnid {w!r} ({s.name()}) is not a noun; class lists hold noun wnids ('n' + 8 digits).")
        if w in parent:
            raise HierarchyError(f"Duplicate name: wnid {w!r} appears twice in the class list.")
        # The class is a leaf (named by wnid) under the chain of its synset's ancestors; its own
        # synset is its parent only when the synset also serves as an internal node, otherwise
        # the leaf replaces it.
        node_titles[w] = str(titles[i]) if titles is not None else _lemma(s)
        chain = _hypernym_chain(s, w, policy)
        parent[w] = chain[0].name()
        for child, par in zip(chain, chain[1:]):
            if child.name() in parent:
                break  # the rest of the chain is already in
            parent[child.name()] = par.name()
            node_titles.setdefault(child.name(), _lemma(child))
        roots.add(chain[-1].name())
        node_titles.setdefault(chain[-1].name(), _lemma(chain[-1]))
    # A listed class whose synset is also an ancestor of another class: move the class leaf
    # under its synset's node (the synset name node already sits in the right place).
    by_synset = {synset_of(w, wn).name(): w for w in wnids}
    internal_names = set(parent.values())
    for syn, w in by_synset.items():
        if syn in internal_names:
            parent[w] = syn
    if len(roots) != 1:
        raise HierarchyError(
            f"The class list reaches {len(roots)} WordNet roots ({', '.join(sorted(roots))}); "
            "use noun wnids only (all nouns descend from entity.n.01)."
        )
    (root,) = roots
    return LabelHierarchy(
        parent,
        root=root,
        leaves=wnids,
        name=name,
        titles=node_titles,
        meta={"source": "wordnet-3.0", "policy": policy, **(meta or {})},
    )


def imagenet1k_hierarchy(policy: str = "longest", wn=None) -> LabelHierarchy:
    """WordNet tree above the ImageNet-1k class list (1000 wnids in class-index order)."""
    return wordnet_hierarchy(
        resource_wnids("imagenet1k"), policy=policy, name="imagenet-1k", wn=wn,
        meta={"class_list": "imagenet1k (nbdt 0.0.4 Imagenet1000.txt)"},
    )


def cifar100_wordnet_hierarchy(policy: str = "longest", wn=None) -> LabelHierarchy:
    """WordNet tree above the CIFAR-100 classes (wnid list from nbdt 0.0.4, class order)."""
    return wordnet_hierarchy(
        resource_wnids("cifar100"), policy=policy, name="cifar100-wordnet",
        titles=resource_names("cifar100"), wn=wn,
        meta={"class_list": "cifar100 (nbdt 0.0.4 CIFAR100.txt, five word senses corrected, see NOTICE)"},
    )


def imagenet21k_hierarchy(path: Path | str, policy: str = "longest", wn=None) -> LabelHierarchy:
    """WordNet tree above an ImageNet-21k class list file (one wnid per line, class order)."""
    wnids = read_wnid_list(path)
    try:
        return wordnet_hierarchy(wnids, policy=policy, name="imagenet-21k", wn=wn, meta={"class_list": str(path)})
    except HierarchyError as exc:  # name the class list the bad wnid came from
        raise HierarchyError(f"Class list file {str(path)!r}: {exc}") from None

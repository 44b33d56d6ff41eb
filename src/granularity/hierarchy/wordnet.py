"""WordNet 3.0 hierarchies for ImageNet-style wnids, offline.

ImageNet's class ids (``n01440764``) are WordNet 3.0 noun offsets. The database is found, in
this order (:func:`find_wordnet_source`):

1. ``$GRANULARITY_WORDNET`` (older name: ``$GRANULARITY_WORDNET_DIR``) when set, and then only
   there: a folder holding the database files (``data.noun``, ``index.noun``, ...), an NLTK data
   folder (``corpora/wordnet/`` or ``corpora/wordnet.zip`` below it), or NLTK's ``wordnet.zip``;
2. the Debian packages ``wordnet-base`` and ``wordnet-sense-index`` (``/usr/share/wordnet/``,
   the root/apt route);
3. NLTK's own data package (``python -m nltk.downloader wordnet``, the route without root):
   ``corpora/wordnet/`` or ``corpora/wordnet.zip`` below any folder of ``nltk.data.path``.

Every route holds the same WordNet 3.0 files (the version line of ``data.noun`` is checked), so
the hierarchies and their content hashes do not depend on the route. :func:`wordnet_reader`
copies the files into the cache folder (``$GRANULARITY_CACHE`` or ``~/.cache/granularity``)
once, writes the ``lexnames`` file that Debian omits and opens an NLTK reader on that folder
(its ``nltk_data`` parent is appended to ``nltk.data.path``, which NLTK requires; nothing is
downloaded).

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

import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from granularity.errors import DataError, GranularityError, HierarchyError, param_error, suggest
from granularity.hierarchy.structure import LabelHierarchy

#: Where the Debian packages put the WordNet 3.0 database.
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

#: The standard WordNet lexicographer files: (number, name, syntactic category number).
LEXNAMES: tuple[tuple[int, str, int], ...] = tuple(
    (i, name, {"adj": 3, "adv": 4, "noun": 1, "verb": 2}[name.split(".")[0]])
    for i, name in enumerate((
        "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
        "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
        "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
        "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
        "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
        "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
    ).split())
)

_POS = ("noun", "verb", "adj", "adv")
_REQUIRED = [f"data.{p}" for p in _POS] + [f"index.{p}" for p in _POS] + [f"{p}.exc" for p in _POS]
_OPTIONAL = ["index.sense", "cntlist.rev", "cntlist"]
#: The two routes to WordNet 3.0, named by every "not found" error.
WORDNET_FIX = (
    "install WordNet 3.0 by either route: with root on Debian/Ubuntu "
    "`apt-get install wordnet-base wordnet-sense-index`; without root "
    "`python -m nltk.downloader wordnet` (NLTK's data package, into ~/nltk_data), or set "
    "GRANULARITY_WORDNET to a folder holding data.noun, index.noun, ... or NLTK's wordnet.zip"
)
#: Environment variables naming the WordNet folder (the second is the older name).
WORDNET_ENV = ("GRANULARITY_WORDNET", "GRANULARITY_WORDNET_DIR")
POLICIES = ("longest", "shortest", "alphabetical")
#: The canonical wnid: a part-of-speech letter and the 8-digit WordNet offset.
_WNID = re.compile(r"[nvasr][0-9]{8}")


def cache_dir() -> Path:
    """The granularity cache folder: ``$GRANULARITY_CACHE`` or ``~/.cache/granularity``."""
    env = os.environ.get("GRANULARITY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "granularity"


def lexnames_text() -> str:
    """The 45-line ``lexnames`` file (``NN<TAB>name<TAB>category``)."""
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, name, cat in LEXNAMES)


def _env_wordnet() -> tuple[str, Path] | None:
    for var in WORDNET_ENV:
        if os.environ.get(var):
            return var, Path(os.environ[var]).expanduser()
    return None


def wordnet_source_dir() -> Path:
    """The folder named by ``$GRANULARITY_WORDNET`` or, unset, the Debian folder."""
    env = _env_wordnet()
    return env[1] if env else DEBIAN_WORDNET_DIR


def _has_files(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _REQUIRED)


def _zip_prefix(path: Path) -> str | None:
    """The member folder (``wordnet/``) of an NLTK-style zip that holds all files, or None."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return None
    for prefix in ("wordnet/", ""):
        if all(prefix + f in names for f in _REQUIRED):
            return prefix
    return None


def _source_in(root: Path) -> Path | None:
    """A WordNet source in or at ``root``: a folder of files or an NLTK ``wordnet.zip``."""
    for cand in (root, root / "wordnet", root / "corpora" / "wordnet"):
        if cand.is_dir() and _has_files(cand):
            return cand
    for cand in (root, root / "wordnet.zip", root / "corpora" / "wordnet.zip"):
        if cand.is_file() and _zip_prefix(cand) is not None:
            return cand
    return None


def _nltk_data_path() -> list[Path]:
    import nltk.data  # NLTK's own search path (~/nltk_data, $NLTK_DATA, <prefix>/nltk_data, ...)

    return [Path(p) for p in nltk.data.path if isinstance(p, str)]


def find_wordnet_source() -> tuple[str, Path]:
    """``(route, path)`` of the WordNet 3.0 database: route is ``"env"``, ``"debian"`` or
    ``"nltk"``; path a folder of files or an NLTK ``wordnet.zip``. A one-line error naming
    both routes when there is none (an env variable that is set is the only place looked at).
    """
    env = _env_wordnet()
    if env is not None:
        found = _source_in(env[1])
        if found is None:
            raise GranularityError(
                f"WordNet 3.0 database not found in {str(env[1])!r} (named by {env[0]}: no "
                f"data.noun, index.noun, ..., corpora/wordnet or wordnet.zip there); {WORDNET_FIX}."
            )
        return "env", found
    if _has_files(DEBIAN_WORDNET_DIR):
        return "debian", DEBIAN_WORDNET_DIR
    for root in _nltk_data_path():
        found = _source_in(root / "corpora") if (root / "corpora").is_dir() else None
        if found is not None:
            return "nltk", found
    raise GranularityError(
        f"WordNet 3.0 database not found (looked in {str(DEBIAN_WORDNET_DIR)!r} and the NLTK "
        f"data folders, e.g. ~/nltk_data); {WORDNET_FIX}."
    )


def wordnet_missing_reason() -> str | None:
    """``None`` when :func:`find_wordnet_source` finds WordNet 3.0, else its one-line error
    (which names both routes): the reason tests that need WordNet skip with."""
    try:
        find_wordnet_source()
    except GranularityError as exc:
        return str(exc)
    return None


def _check_version(data_noun_head: bytes, source: Path) -> None:
    # The license header of data.noun names the version; 3.1 (or another) has other offsets,
    # so ImageNet wnids would silently map to wrong synsets.
    if b"WordNet 3.0 " not in data_noun_head:
        raise GranularityError(
            f"The WordNet database in {str(source)!r} is not WordNet 3.0 (ImageNet wnids are "
            f"WordNet 3.0 offsets); {WORDNET_FIX}."
        )


def _copy_source(source: Path, tmp: Path) -> None:
    """Copy the database files from a folder or an NLTK zip into ``tmp``."""
    wanted = _REQUIRED + _OPTIONAL
    if source.is_file():
        prefix = _zip_prefix(source)
        if prefix is None:
            raise GranularityError(f"{str(source)!r} is not a WordNet zip; {WORDNET_FIX}.")
        with zipfile.ZipFile(source) as zf:
            names = set(zf.namelist())
            for f in (f for f in wanted if prefix + f in names):
                (tmp / f).write_bytes(zf.read(prefix + f))
    else:
        missing = [f for f in _REQUIRED if not (source / f).is_file()]
        if missing:
            raise GranularityError(
                f"WordNet 3.0 database not found in {str(source)!r} (missing "
                f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); {WORDNET_FIX}."
            )
        for f in (f for f in wanted if (source / f).is_file()):
            shutil.copyfile(source / f, tmp / f)
    with open(tmp / "data.noun", "rb") as fh:
        _check_version(fh.read(4096), source)


def ensure_wordnet(cache: Path | None = None, source: Path | None = None) -> Path:
    """Copy the WordNet 3.0 files into ``<cache>/nltk_data/corpora/wordnet`` and return it.

    ``source`` is a folder of database files or an NLTK ``wordnet.zip`` (default: the one
    :func:`find_wordnet_source` finds). Idempotent: a complete copy is reused. The copy is made
    in a temporary folder and renamed into place, so an interrupted copy is never used.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / "nltk_data" / "corpora" / "wordnet"
    if all((target / f).exists() for f in _REQUIRED + ["lexnames"]):
        return target
    source = Path(source) if source is not None else find_wordnet_source()[1]
    if source.is_dir() and not _has_files(source):
        source = _source_in(source) or source  # an NLTK data folder given as source
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet.", dir=target.parent))
    try:
        _copy_source(source, tmp)
        (tmp / "lexnames").write_text(lexnames_text())
        if target.exists():  # an incomplete earlier copy
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not all((target / f).exists() for f in _REQUIRED + ["lexnames"]):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@lru_cache(maxsize=4)
def _reader(path: str):
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    # NLTK (>= 3.9) only opens corpora below a folder of nltk.data.path, so the cache's
    # nltk_data folder is appended there (additive; NLTK's own search order is unchanged).
    data_root = str(Path(path).parent.parent)
    if data_root not in [str(p) for p in nltk.data.path]:
        nltk.data.path.append(data_root)
    with warnings.catch_warnings():
        # "multilingual functions are not available": expected, there is no OMW here
        warnings.filterwarnings("ignore", message=".*multilingual.*")
        return WordNetCorpusReader(path, None)


def wordnet_reader(cache: Path | None = None):
    """An NLTK ``WordNetCorpusReader`` on the cached copy of the Debian WordNet 3.0 files."""
    return _reader(str(ensure_wordnet(cache)))


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


def wordnet_database(source: Path | str | None = None) -> Path:
    """The cached WordNet 3.0 database folder, copied from ``source`` (a folder holding
    ``data.noun``; default: :func:`find_wordnet_source`) when the cache has no copy yet."""
    if source is not None and not (Path(source).expanduser() / "data.noun").is_file():
        raise DataError(
            f"WordNet folder {str(source)!r} has no data.noun; give the folder of the WordNet 3.0 "
            "database (Debian: /usr/share/wordnet) or leave root unset."
        )
    return ensure_wordnet(source=Path(source).expanduser() if source is not None else None)


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

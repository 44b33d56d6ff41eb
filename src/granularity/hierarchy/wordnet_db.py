"""The WordNet 3.0 database, offline: where it is, its cached copy, and an NLTK reader on it.

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
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

from granularity.errors import DataError, GranularityError

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


def wordnet_database(source: Path | str | None = None) -> Path:
    """The cached WordNet 3.0 database folder, copied from ``source`` (a folder holding
    ``data.noun``; default: :func:`find_wordnet_source`) when the cache has no copy yet."""
    if source is not None and not (Path(source).expanduser() / "data.noun").is_file():
        raise DataError(
            f"WordNet folder {str(source)!r} has no data.noun; give the folder of the WordNet 3.0 "
            "database (Debian: /usr/share/wordnet) or leave root unset."
        )
    return ensure_wordnet(source=Path(source).expanduser() if source is not None else None)


"""Text to token ids, offline and deterministic: lowercase words plus hashed word n-grams.

The fastText recipe without a vocabulary: a text is lowercased and split into words
(runs of letters and digits, with an inner apostrophe: ``don't``); its first ``max_words``
words give the word n-grams for ``n = 1 .. ngrams`` (unigrams first, then bigrams, ...), and
each n-gram is hashed into one of ``buckets - 1`` ids (``1 .. buckets - 1``; id 0 is padding).

Hashing needs no fitting (so nothing is learnt from the test split) and no download; it is
CRC-32 of the UTF-8 n-gram (prefixed with its order), so ids are the same in every process
and on every platform (Python's ``hash`` of strings changes from one process to the next).
Different n-grams can share an id (a collision); with 2^17 buckets and the ~0.3M distinct
uni- and bigrams of the WordNet noun glosses that is rare enough for a bag-of-n-grams model.

>>> tok = HashTokenizer(buckets=1000, ngrams=2)
>>> tok.words("A dog's bark, LOUD!")
['a', "dog's", 'bark', 'loud']
>>> len(tok.ids("a dog barks"))   # 3 unigrams + 2 bigrams
5
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from granularity.errors import param_error

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")  # letters/digits (any script), one inner apostrophe


@dataclass(frozen=True)
class HashTokenizer:
    """Lowercase words and hashed word n-grams (see the module docstring).

    Parameters
    ----------
    buckets : int
        Number of ids including the padding id 0; n-grams map to ``1 .. buckets - 1``.
    ngrams : int
        Longest word n-gram (1: words only; 2: words and bigrams).
    max_words : int
        Words of a text used (the rest is cut), which bounds the token count by
        ``sum(max_words - n + 1 for n in 1..ngrams)``.
    """

    buckets: int = 2**17
    ngrams: int = 2
    max_words: int = 64

    def __post_init__(self) -> None:
        for name, low in (("buckets", 2), ("ngrams", 1), ("max_words", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise param_error(name, f"an int in the range [{low}, inf)", v)

    def words(self, text: str) -> list[str]:
        """The lowercased words of ``text`` (at most ``max_words``)."""
        return _WORD.findall(str(text).lower().replace("\u2019", "'"))[: self.max_words]

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text``: its unigrams, then bigrams, ... (in text order)."""
        words = self.words(text)
        out = []
        for n in range(1, self.ngrams + 1):
            for i in range(len(words) - n + 1):
                gram = f"{n}\x1f" + " ".join(words[i : i + n])
                out.append(1 + zlib.crc32(gram.encode("utf-8")) % (self.buckets - 1))
        return out

    @property
    def max_tokens(self) -> int:
        """The most ids one text can give."""
        return sum(max(0, self.max_words - n + 1) for n in range(1, self.ngrams + 1))

    def encode(self, texts: Sequence[str], length: int | None = None) -> np.ndarray:
        """``int64 (N, length)`` ids, each row left-aligned and padded with 0.

        ``length`` defaults to the longest row (at least 1); longer rows are an error rather
        than being cut silently.
        """
        rows = [self.ids(t) for t in texts]
        longest = max((len(r) for r in rows), default=0)
        width = max(1, longest) if length is None else int(length)
        if longest > width:
            raise param_error("length", f"at least the longest text's {longest} tokens", length)
        out = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def to_dict(self) -> dict[str, int | str]:
        return {"kind": "hash-ngrams-crc32", **asdict(self)}

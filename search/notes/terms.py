"""BM25 terms that understand Korean: passages and queries → morphemes (every backend's BM25 side).

Korean particles stick to nouns (`hallucination문제를`, `강화학습으로`), so
whitespace tokens almost never match between a query and a note. Passages are
therefore analysed with Kiwi (kiwipiepy), keeping nouns, roots, foreign words
and numbers, English lower-cased and kept whole.

Kiwi takes about a second to load, which a one-shot query cannot afford.
Queries are short and BM25 can only ever match terms that occur in the
corpus, so a query is instead segmented against the index's own vocabulary:
Latin and digit runs are terms as they are, and each Hangul run is cut
greedily into the longest vocabulary words it starts with (`문제를` → `문제`,
`강화학습했다` → `강화`, `학습`). That needs no model and takes microseconds.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

# Kiwi tags kept as index terms: common/proper nouns, roots, foreign words, numbers, hanja.
KEEP_TAGS = {"NNG", "NNP", "XR", "SL", "SN", "SH"}
_QUERY_RUNS = re.compile(r"[A-Za-z]+|[0-9]+|[\uac00-\ud7a3]+")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_HANGUL_WORD = re.compile(r"[\uac00-\ud7a3]+")


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """English and Korean function words (bm25s's lists): they match everywhere and rank nothing."""
    from bm25s.stopwords import STOPWORDS_EN_PLUS, STOPWORDS_KOREAN

    return frozenset(STOPWORDS_EN_PLUS) | frozenset(STOPWORDS_KOREAN)


@lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    # Without the typo and multi-word dictionaries Kiwi loads in about 1 s instead of 2.2-3.2 s,
    # and gives the same terms for every passage of both labelled sets (measured).
    return Kiwi(load_typo_dict=False, load_multi_dict=False)


# Analysing more texts than this at once frees Kiwi (about 300 MB) afterwards: such a build goes
# on to load the passage model, and a build's peak memory is what limits its size (#22). The
# small builds of `--watch` keep it loaded, and so their speed.
RELEASE_AFTER = 256


def passage_terms(texts: Sequence[str]) -> list[list[str]]:
    """Index terms for each text: Kiwi morphemes of the kept kinds, lower-cased."""
    if not texts:
        return []
    kiwi, stop = _kiwi(), stopwords()
    terms = [
        [form for t in tokens if t.tag in KEEP_TAGS and (form := t.form.lower()) not in stop]
        for tokens in kiwi.tokenize(list(texts))
    ]
    if len(texts) > RELEASE_AFTER:
        del kiwi
        _kiwi.cache_clear()
    return terms


class QuerySegmenter:
    """Cuts query text into terms of one vocabulary (see module doc); build once per vocabulary.

    Greedy longest match only ever tries piece lengths that some Hangul
    vocabulary word has, so a run of n syllables costs n x (number of distinct
    word lengths) set look-ups: linear in the query, whatever its length.
    """

    def __init__(self, vocab: set[str] | frozenset[str]):
        self.vocab = vocab
        # Single syllables are left out: they count only as a whole one-syllable run.
        self._lengths = sorted({len(w) for w in vocab if len(w) > 1 and _HANGUL_WORD.fullmatch(w)}, reverse=True)

    def terms(self, query: str) -> list[str]:
        """Terms of `query`: Latin and digit runs lower-cased, Hangul runs cut into vocabulary words."""
        terms: list[str] = []
        for run in _QUERY_RUNS.findall(query):
            if not _HANGUL.match(run):
                terms.append(run.lower())
            elif len(run) == 1:
                if run in self.vocab:
                    terms.append(run)
            else:
                terms.extend(self._hangul_words(run))
        return terms

    def _hangul_words(self, run: str) -> list[str]:
        words: list[str] = []
        i = 0
        while i < len(run):
            # Longest vocabulary word starting here, else move one syllable on:
            # most single syllables are particles or endings.
            for n in self._lengths:
                if i + n <= len(run) and (piece := run[i : i + n]) in self.vocab:
                    words.append(piece)
                    i += n
                    break
            else:
                i += 1
        return words


def query_terms(query: str, vocab: set[str] | frozenset[str]) -> list[str]:
    """Terms of a query, segmented against the corpus vocabulary (no Kiwi, see module doc)."""
    return QuerySegmenter(vocab).terms(query)

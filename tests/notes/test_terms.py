"""BM25 terms for Korean: morphemes at index time, vocabulary segmentation at query time."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CORPUS, DEV, DEV2, SEEDS

from search.notes.terms import QuerySegmenter, passage_terms, query_terms
from search.notes.reader import read_reviews


def test_passage_terms_strip_particles_and_keep_english_whole():
    (terms,) = passage_terms(["Whisper의 hallucination문제를 self-attention 헤드로 해결했다 15%"])
    assert {"whisper", "hallucination", "문제", "헤드", "해결", "15"} <= set(terms)
    assert "를" not in terms and "의" not in terms


def test_query_terms_segment_against_the_vocabulary():
    vocab = {"문제", "해결", "강화", "학습", "whisper", "데이터"}
    assert query_terms("Whisper hallucination문제를 해결", vocab) == ["whisper", "hallucination", "문제", "해결"]
    assert query_terms("강화학습했다 학습데이터", vocab) == ["강화", "학습", "학습", "데이터"]
    assert query_terms("모르는말", vocab) == []


def greedy_reference(query: str, vocab: set[str]) -> list[str]:
    """The plain greedy longest match query_terms must agree with (every end point tried; cubic)."""
    terms = []
    for run in re.findall(r"[A-Za-z]+|[0-9]+|[\uac00-\ud7a3]+", query):
        if not re.match(r"[\uac00-\ud7a3]", run):
            terms.append(run.lower())
            continue
        i = 0
        while i < len(run):
            for j in range(len(run), i, -1):
                if run[i:j] in vocab and (j - i > 1 or len(run) == 1):
                    terms.append(run[i:j])
                    i = j
                    break
            else:
                i += 1
    return terms


syllables = st.text("가나다라학습", max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.sets(st.one_of(syllables, st.text("abc", max_size=4)), max_size=12), st.lists(st.one_of(syllables, st.sampled_from([" ", "x", "1", "A", "를"])), max_size=8))
def test_query_terms_equal_plain_greedy_matching(vocab, parts):
    query = "".join(parts)
    assert query_terms(query, vocab) == greedy_reference(query, vocab)


def test_query_terms_equal_plain_greedy_matching_on_the_notes():
    # Every sentence of the notes at hand (ours, the seed week, and the labelled corpora where
    # present), as a query, against their whole vocabulary.
    folders = [CORPUS, SEEDS, DEV / "weeks", DEV2 / "weeks"]
    texts = [r.body for r in read_reviews([f for f in folders if f.is_dir()]).reviews]
    vocab = {t for terms in passage_terms(texts) for t in terms}
    segmenter = QuerySegmenter(vocab)
    sentences = [s for text in texts for s in re.split(r"[.\n]", text) if s.strip()]
    assert len(sentences) > 50
    for s in sentences:
        assert segmenter.terms(s) == greedy_reference(s, vocab)
    # and with the spaces taken out, the way hurried queries are typed
    for s in sentences[:200]:
        squeezed = s.replace(" ", "")
        assert segmenter.terms(squeezed) == greedy_reference(squeezed, vocab)


class CountingSet(set):
    """A vocabulary that counts membership tests: the segmenter's unit of work."""

    lookups = 0

    def __contains__(self, item):
        CountingSet.lookups += 1
        return super().__contains__(item)


def test_long_queries_without_spaces_segment_in_linear_time():
    # Was cubic: 4,000 syllables took 4 s and 40,000 never finished (wall time: bench/query_segmentation.py).
    vocab = CountingSet({"문제", "해결", "강화", "학습", "데이터"} | {"가나다라마바사아자차카타파하"[:k] for k in range(2, 15)})
    lengths = len({len(w) for w in vocab})
    work = {}
    for repeats in (170, 1700):  # ~4,000 and ~40,000 syllables without a space
        query = ("가나다라마바사아자차카타파" + "문제를해결하는강화학습") * repeats
        CountingSet.lookups = 0
        terms = query_terms(query, vocab)
        work[repeats] = CountingSet.lookups
        assert work[repeats] <= len(query) * lengths
    assert work[1700] <= 11 * work[170]  # ten times the query, ten times the work (quadratic: 100 times)
    assert terms[:4] == ["가나다라마바사아자차카타파", "문제", "해결", "강화"]


def test_query_terms_match_kiwi_on_the_notes():
    # The query-side segmenter must find what Kiwi finds in the same sentence.
    text = "위스퍼는 hallucination문제가 있고 디코더의 self-attention 헤드를 파인튜닝한다"
    (kiwi_terms,) = passage_terms([text])
    assert set(query_terms(text, set(kiwi_terms))) == set(kiwi_terms)

"""Late interaction: the token codec, MaxSim, token states in the index, and the late ranking mode."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fakes import FakeEncoder
from search.rank import late
from search.model import tokens as token_rules
from search.store import tokens as token_store
from search.indexing.build import build_index
from search.errors import IndexDamaged
from search.rank.fusion import RRF_K
from search.rank.searcher import Searcher
from search.rank.request import DEFAULT_MODE, Mode, SearchRequest
from search.store.index import TOKENS, open_index


def token_like(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    """Unit rows shaped like e5 token states: one shared direction plus low-rank structure and noise.

    The shape of the distribution is fixed; `seed` only draws different tokens from it.
    """
    shape = np.random.default_rng(0)
    shared, topics = shape.normal(size=dim), shape.normal(size=(40, dim))
    rng = np.random.default_rng(1000 + seed)
    x = 3 * shared + rng.normal(size=(n, 40)) @ topics * 0.5 + rng.normal(size=(n, dim)) * 0.3
    return token_rules.unit_rows(x)


def test_maxsim_is_mean_of_best_cosines():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    # token 1's best is 1.0 (p0); token 2's best is 0.8 (p1)
    assert late.maxsim(q, p) == pytest.approx(0.9)
    assert late.maxsim(q, p[:1]) == pytest.approx(0.5)
    assert late.maxsim(q[:0], p) == 0.0


def test_keep_mask_drops_specials_prefix_and_punctuation():
    pieces = ["<s>", "\u2581passage", ":", "\u2581whisper", ",", "\u2581해결", "\u2581", "!", "</s>"]
    assert token_rules.keep_mask(pieces, 2, "all").all()
    assert token_rules.keep_mask(pieces, 2, "nospecial").tolist() == [False] + [True] * 7 + [False]
    assert [p for p, k in zip(pieces, token_rules.keep_mask(pieces, 2, "nopunct")) if k] == ["\u2581whisper", "\u2581해결"]
    assert token_rules.keep_mask(["<s>", "!", "</s>"], 0).all()  # nothing left: keep everything rather than nothing


@pytest.mark.parametrize("bits,floor", [(8, 0.98), (4, 0.93)])
def test_codec_round_trip_keeps_cosines(bits, floor):
    fit, held_out = token_like(3000), token_like(300, seed=1)  # same distribution, other tokens
    codec = token_store.TokenCodec.fit(fit, dim=256, bits=bits)
    decoded = codec.decode(codec.encode(held_out))
    assert decoded.shape == held_out.shape
    assert np.allclose(np.linalg.norm(decoded, axis=1), 1, atol=1e-4)
    assert np.einsum("ij,ij->i", decoded, held_out).min() >= floor
    # what MaxSim sees: the similarity structure between tokens survives
    sims, approx = held_out[:50] @ held_out[50:].T, decoded[:50] @ held_out[50:].T
    assert np.abs(sims - approx).max() < 0.1


@pytest.mark.parametrize("bits,dim", [(4, 256), (4, 255), (8, 256), (8, 101)])
def test_cosines_from_codes_equal_cosines_with_decoded_tokens(bits, dim):
    codec = token_store.TokenCodec.fit(token_like(1000), dim=dim, bits=bits)
    enc = codec.encode(token_like(40, seed=3))
    query = token_like(7, seed=4)
    assert np.allclose(codec.cosines(query, enc)[0], query @ codec.decode(enc).T, atol=1e-5)


def test_default_codec_fits_the_storage_budget():
    codec = token_store.TokenCodec.fit(token_like(2000))
    # 120 tokens: the mean per passage on the larger labelled set before special,
    # prefix and punctuation tokens are dropped (about 104 are stored).
    encoded = codec.encode(token_like(120, seed=2))
    assert encoded.nbytes <= 16 * 1024
    assert encoded.nbytes < 120 * 384 * 4 / 10  # over 10x smaller than float32


def test_codec_fitted_on_few_tokens_still_has_full_dimension():
    codec = token_store.TokenCodec.fit(token_like(10), dim=64)
    assert codec.basis.shape == (64, 384)
    assert np.allclose(codec.basis @ codec.basis.T, np.eye(64), atol=1e-4)


def test_token_store_saves_without_pickle_and_loads(tmp_path: Path):
    codec = token_store.TokenCodec.fit(token_like(500))
    passages = [token_like(n, seed=n) for n in (3, 7, 1)]
    store = token_store.TokenStore.from_encoded(codec, 500, [codec.encode(p) for p in passages])
    store.save(tmp_path / "t")
    loaded = token_store.TokenStore.load(tmp_path / "t")
    assert len(loaded) == 3 and loaded.total_tokens == 11 and loaded.fitted_tokens == 500
    for row, p in enumerate(passages):
        assert np.allclose(loaded.states(row), store.states(row))
        assert np.einsum("ij,ij->i", loaded.states(row), p).min() > 0.9
    assert all(np.load(f, allow_pickle=False) is not None for f in (tmp_path / "t").glob("*.npy"))


def test_index_holds_token_states_for_every_passage(notes: Path, tmp_path: Path, fake_encoder):
    summary = build_index([notes], tmp_path / "idx", fake_encoder)
    assert summary.tokens_embedded == summary.passages
    with open_index(tmp_path / "idx") as idx:
        states = [idx.tokens.states(r) for r in range(idx.size)]
        texts = [p.embed_text for p in idx.passages()]
    for s, text in zip(states, texts):
        exact = fake_encoder.embed_passages_and_tokens([text])[1][0]
        assert s.shape == exact.shape and np.einsum("ij,ij->i", s, exact).min() > 0.9


def test_incremental_build_embeds_tokens_of_changed_passages_only(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    week = notes / "week3.md"
    week.write_text(week.read_text(encoding="utf-8").replace("비용이 낮아진다.", "비용이 크게 낮아진다."), encoding="utf-8")
    fake_encoder.token_embedded.clear()
    summary = build_index([notes], tmp_path / "idx", fake_encoder)
    assert summary.tokens_embedded == summary.embedded == 1
    assert len(fake_encoder.token_embedded) == 1 and "크게 낮아진다" in fake_encoder.token_embedded[0]
    with open_index(tmp_path / "idx") as idx:  # reused codes decode as before
        assert len(idx.tokens) == idx.size


def test_index_that_doubles_refits_the_codec_from_its_codes_without_embedding_them_again(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        first_fit = idx.tokens.fitted_tokens
    for i in range(3):
        shutil.copy(notes / "week3.md", notes / f"week{4 + i}.md")
        (notes / f"week{4 + i}.md").write_text((notes / "week3.md").read_text(encoding="utf-8").replace("3주차", f"{4 + i}주차")
                                               .replace("모델이다", f"모델이다 {i}번째"), encoding="utf-8")
    summary = build_index([notes], tmp_path / "idx", fake_encoder)
    assert summary.tokens_embedded == summary.embedded < summary.passages
    with open_index(tmp_path / "idx") as idx:
        assert first_fit < idx.tokens.fitted_tokens == idx.tokens.total_tokens  # refitted on every token
        again = [idx.tokens.states(r) for r in range(idx.size)]
    fresh = build_index([notes], tmp_path / "fresh", FakeEncoder())
    with open_index(tmp_path / "fresh") as idx:  # decoded twice, the old passages' tokens stay close to a fresh fit's
        for r in range(fresh.passages):
            assert np.mean(np.sum(again[r] * idx.tokens.states(r), axis=1)) > 0.97


def test_ten_weekly_builds_embed_each_passage_once(tmp_path: Path):
    """A week a build, as a group adds them: the codec refits as the index doubles (weeks 2, 4, 8
    under the rule), and still no passage is embedded twice, vector or tokens."""
    from synthetic import write_weeks

    weeks = write_weeks(tmp_path / "all", weeks=10, topics=2, reviews=2, paragraphs=2, sentences=3)
    notes = tmp_path / "notes"
    notes.mkdir()
    encoder = FakeEncoder()
    fits = []
    for w in range(1, 11):
        shutil.copy(weeks / f"week{w}.md", notes)
        build_index([notes], tmp_path / "idx", encoder)
        with open_index(tmp_path / "idx") as idx:
            fits.append(idx.tokens.fitted_tokens)
            texts = [p.embed_text for p in idx.passages()]
    assert len(set(fits)) >= 3  # refitted more than once on the way
    assert sorted(encoder.embedded) == sorted(texts) and sorted(encoder.token_embedded) == sorted(texts)


def _more_weeks(notes: Path, n: int) -> None:
    for i in range(n):
        (notes / f"week{4 + i}.md").write_text((notes / "week3.md").read_text(encoding="utf-8").replace("3주차", f"{4 + i}주차")
                                               .replace("모델이다", f"모델이다 {i}번째"), encoding="utf-8")


def test_a_codec_fitted_on_a_full_sample_is_kept_and_no_old_passage_is_embedded_again(
    notes: Path, tmp_path: Path, fake_encoder, monkeypatch
):
    monkeypatch.setattr(token_store, "FIT_TOKENS", 20)  # the sample: a few passages' tokens
    monkeypatch.setattr("search.store.update.EMBED_CHUNK", 1)
    first = build_index([notes], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        fitted, total = idx.tokens.fitted_tokens, idx.tokens.total_tokens
    assert 20 <= fitted < total and first.tokens_embedded == first.passages
    _more_weeks(notes, 3)  # four times the tokens: before, a refit and every passage embedded again
    grown = build_index([notes], tmp_path / "idx", fake_encoder)
    assert grown.tokens_embedded == grown.embedded < grown.passages - first.passages  # copies reuse theirs
    with open_index(tmp_path / "idx") as idx:
        assert idx.tokens.fitted_tokens == fitted and len(idx.tokens) == idx.size


def test_a_build_holds_the_states_of_the_codec_sample_and_a_chunk_not_every_passage(monkeypatch):
    import gc
    import weakref

    monkeypatch.setattr(token_store, "FIT_TOKENS", 10)
    rng = np.random.default_rng(0)
    alive: list[weakref.ref] = []
    held_at_request: list[int] = []

    def embed(rows):
        for start in range(0, len(rows), 2):
            gc.collect()
            held_at_request.append(sum(r() is not None for r in alive))
            states = [token_rules.unit_rows(rng.normal(size=(5, 384)).astype(np.float32)) for _ in rows[start:start + 2]]
            alive.extend(weakref.ref(s) for s in states)
            yield rows[start:start + 2], states

    store, embedded = token_store.build_store([f"k{i}" for i in range(12)], embed, None, {}, set(range(12)), lambda rows: 0)
    assert embedded == 12 and len(store) == 12 and store.fitted_tokens == 10
    # the first two chunks are the sample; after the fit nothing earlier than the current chunk is alive
    assert max(held_at_request[3:]) <= 2, held_at_request

    # A refit of a grown store (12 stored, 12 new: twice the tokens) holds the sample's new states, then a chunk.
    alive.clear()
    held_at_request.clear()
    keys = [f"k{i}" for i in range(12)] + [f"n{i}" for i in range(12)]
    grown, embedded = token_store.build_store(keys, embed, store, {f"k{i}": i for i in range(12)}, set(),
                                              lambda rows: 5 * len(rows))
    assert embedded == 12 and len(grown) == 24 and 10 <= grown.fitted_tokens < grown.total_tokens
    # the sample (two passages' tokens) is embedded first; past it, at most it and a chunk are alive
    assert len(held_at_request) == 6 and max(held_at_request[2:]) <= 4, held_at_request


def test_damaged_token_file_is_a_one_line_error(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        (idx.folder / TOKENS / token_store.OFFSETS).write_bytes(b"junk")
        with pytest.raises(IndexDamaged, match="tokens is damaged"):
            Searcher(idx, fake_encoder).search(SearchRequest("LoRA low-rank"))


@pytest.mark.parametrize("damage", ["empty passage", "codec settings not an object", "codes of another width"])
def test_token_store_that_parses_but_is_wrong_is_damage_not_an_internal_error(notes: Path, tmp_path: Path, fake_encoder, damage):
    build_index([notes], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        folder = idx.folder / TOKENS
        if damage == "empty passage":
            offsets = np.load(folder / token_store.OFFSETS)
            offsets[1] = offsets[0]
            np.save(folder / token_store.OFFSETS, offsets)
        elif damage == "codec settings not an object":
            (folder / token_store.INFO).write_text("[]", encoding="utf-8")
        else:
            np.save(folder / token_store.CODES, np.load(folder / token_store.CODES)[:, :-1])
        with pytest.raises(IndexDamaged, match="tokens is damaged"):
            Searcher(idx, fake_encoder).search(SearchRequest.parse("LoRA low-rank"))


def test_late_is_the_default_and_ranks_by_review_maxsim(notes: Path, tmp_path: Path, fake_encoder):
    assert DEFAULT_MODE == Mode.LATE
    build_index([notes], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        result = Searcher(idx, fake_encoder).search(SearchRequest.parse("low-rank 행렬 LoRA"))
    top = result.hits[0]
    assert top.passage.topic.startswith("LoRA")
    assert top.score == top.maxsim and 0 < top.maxsim <= 1 and top.fused > 0
    assert [h.maxsim for h in result.hits] == sorted((h.maxsim for h in result.hits), reverse=True)
    d = top.as_dict()
    assert {"score", "dense", "lexical", "maxsim", "fused"} <= d.keys() and d["maxsim"] == round(top.maxsim, 6)


def test_late_fusion_weights_maxsim_ranks_over_bm25_ranks(notes: Path, tmp_path: Path, fake_encoder):
    # Every fused value is MAXSIM_WEIGHT/(RRF_K + i) + PAPER_WEIGHT/(RRF_K + l), plus 1/(RRF_K + j) when BM25
    # ranked the row j-th and PAPER_LEXICAL_WEIGHT/(RRF_K + m) when paper BM25 ranked it m-th.
    build_index([notes], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        hits = Searcher(idx, fake_encoder).search(SearchRequest.parse("low-rank 행렬 LoRA", k=50, group="passage")).hits
        n = idx.size
    k, w, wp, wb = RRF_K, late.MAXSIM_WEIGHT, late.PAPER_WEIGHT, late.PAPER_LEXICAL_WEIGHT
    ranked = [0.0] + [1 / (k + j) for j in range(1, n + 1)]
    values = {w / (k + i) + wp / (k + l) + lex + wb * paper for i in range(1, n + 1) for l in range(1, n + 1)
              for lex in ranked for paper in ranked}
    assert len(hits) == n
    for h in hits:
        assert min(abs(h.fused - v) for v in values) < 1e-12, h.fused
    assert hits[0].fused > w / (k + 1) + wp / (k + n)  # the top row is first by MaxSim and matched BM25 too


def test_late_mode_respects_filters(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        hits = Searcher(idx, fake_encoder).search(SearchRequest.parse("hallucination", reviewer="김철수")).hits
    assert hits and all(h.passage.reviewer == "김철수" for h in hits)


def test_late_scores_equal_maxsim_over_decoded_tokens():
    codec = token_store.TokenCodec.fit(token_like(800))
    passages = [token_like(n, seed=n) for n in (5, 9, 2, 7, 4)]
    store = token_store.TokenStore.from_encoded(codec, 800, [codec.encode(p) for p in passages])
    query = token_like(6, seed=99)
    # papers: {reviews [0, 2] and [3]}, {review [1, 4]}
    ms = store.late_scores(query, [[[0, 2], [3]], [[1, 4]]])
    decoded = [store.states(r) for r in range(5)]
    for r in range(5):
        assert ms.passage[r] == pytest.approx(late.maxsim(query, decoded[r]), abs=1e-5)
    assert ms.review[0] == ms.review[2] == pytest.approx(late.maxsim(query, np.vstack([decoded[0], decoded[2]])), abs=1e-5)
    assert ms.review[3] == pytest.approx(ms.passage[3], abs=1e-6)
    first = late.maxsim(query, np.vstack([decoded[0], decoded[2], decoded[3]]))
    assert ms.paper[0] == ms.paper[2] == ms.paper[3] == pytest.approx(first, abs=1e-5)
    assert ms.paper[1] == ms.paper[4] == pytest.approx(ms.review[1], abs=1e-6)
    assert ms.paper[3] > ms.review[3] + 1e-3  # the paper's other review lifts it


def test_paper_scores_on_the_corpus_pool_each_papers_reviews(corpus_index: Path, fake_encoder):
    with open_index(corpus_index) as idx:
        searcher = Searcher(idx, fake_encoder)
        rows = np.arange(idx.size)
        ms = searcher.late_scores(fake_encoder.embed_query_tokens("low-rank adaptation 학습 비용"), rows)
        passages = idx.passages()
        store = idx.tokens
        query = fake_encoder.embed_query_tokens("low-rank adaptation 학습 비용")
    papers: dict = {}
    for p in passages:
        papers.setdefault((p.path, p.topic_no), set()).add(p.review_key)
    assert any(len(reviews) > 1 for reviews in papers.values())  # else the test shows nothing
    for p in passages:
        same = [q.row for q in passages if (q.path, q.topic_no) == (p.path, p.topic_no)]
        assert ms.paper[p.row] == pytest.approx(late.maxsim(query, np.vstack([store.states(r) for r in same])), abs=1e-5)
        assert ms.paper[p.row] >= ms.review[p.row] - 1e-9 and ms.review[p.row] >= ms.passage[p.row] - 1e-9


def test_empty_index_then_a_week(tmp_path: Path, notes: Path, fake_encoder):
    (tmp_path / "empty").mkdir()
    build_index([tmp_path / "empty"], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        assert idx.size == 0 and len(idx.tokens) == 0
        assert Searcher(idx, fake_encoder).search(SearchRequest.parse("LoRA")).hits == []
    summary = build_index([notes], tmp_path / "idx", fake_encoder)
    assert summary.tokens_embedded == summary.passages > 0


def test_paper_bm25_ranking_lifts_a_review_whose_sibling_matched(corpus_index: Path, fake_encoder, monkeypatch):
    # With a weight no other ranking can outvote (1000/(k+i) - 1000/(k+i+1) > the others' 5.5/(k+1)), rows
    # come exactly in paper BM25 order: the paper's review that lacks the words follows the one that has them.
    monkeypatch.setattr(late, "PAPER_LEXICAL_WEIGHT", 1000.0)
    with open_index(corpus_index) as idx:
        searcher = Searcher(idx, fake_encoder)
        request = SearchRequest.parse("in-batch negative", k=50, group="passage")
        hits = searcher.search(request).hits
        terms = idx.lexical.terms(request.query)
        paper = idx.paper_lexical.scores_for(terms)
        passage = idx.lexical.scores_for(terms)
    matched = sorted(np.nonzero(paper > 0)[0], key=lambda r: (-paper[r], -passage[r], r))
    assert [h.passage.row for h in hits[: len(matched)]] == matched
    lifted = [h for h in hits[: len(matched)] if not passage[h.passage.row]]
    assert lifted and all(h.passage.topic.startswith("Dense Passage") for h in hits[: len(matched)])
    monkeypatch.setattr(late, "PAPER_LEXICAL_WEIGHT", 0.0)
    with open_index(corpus_index) as idx:
        without = Searcher(idx, fake_encoder).search(request).hits
    assert [h.passage.row for h in without[: len(matched)]] != matched  # else this query shows nothing


def test_paper_bm25_ranking_respects_filters(corpus_index: Path, fake_encoder, monkeypatch):
    # The paper's score is the whole paper's, yet only the allowed rows are ranked by it.
    monkeypatch.setattr(late, "PAPER_LEXICAL_WEIGHT", 1000.0)
    with open_index(corpus_index) as idx:
        hits = Searcher(idx, fake_encoder).search(SearchRequest.parse("in-batch negative", reviewer="최지우")).hits
    assert hits and all(h.passage.reviewer == "최지우" for h in hits)
    assert hits[0].passage.topic.startswith("Dense Passage") and not hits[0].lexical


def test_store_works_out_each_token_length_once():
    codec = token_store.TokenCodec.fit(token_like(800))
    store = token_store.TokenStore.from_encoded(codec, 800, [codec.encode(token_like(n, seed=n)) for n in (5, 9, 2, 7)])
    query = token_like(6, seed=99)
    store.cosines(query, [3, 1])
    span = slice(store.offsets[3], store.offsets[4])
    enc = store.encoded(3)
    assert np.allclose(np.linalg.norm(codec.decode(enc, unit=False), axis=1), store._lengths[span], atol=1e-5)
    store._lengths[span] = 2 * store._lengths[span]  # what was kept is what the next call uses
    assert np.allclose(store.cosines(query, [3]), codec.cosines(query, enc)[0] / 2, atol=1e-5)
    assert np.allclose(store.cosines(query, [0]), codec.cosines(query, store.encoded(0))[0], atol=1e-5)


@pytest.mark.parametrize("min_score", [None, 0.0])
def test_late_query_runs_the_model_once(corpus_index: Path, min_score):
    calls: list[str] = []

    class Counting(FakeEncoder):
        def __getattribute__(self, name):
            if name.startswith("embed_query"):
                calls.append(name)
            return super().__getattribute__(name)

    with open_index(corpus_index) as idx:
        Searcher(idx, Counting()).search(SearchRequest.parse("low-rank adaptation", min_score=min_score))
    assert calls == ["embed_query_tokens"]  # a small index needs no query vector, with a floor too


def test_large_index_scores_a_pool_from_dense_and_bm25(corpus_index: Path, monkeypatch):
    """Over LATE_POOL passages MaxSim scores only the head of dense and BM25 fused (here: a pool of 3)."""
    from search.rank import searcher as ranking

    monkeypatch.setattr(ranking, "LATE_POOL", 3)
    encoder = FakeEncoder()
    with open_index(corpus_index) as idx:
        assert idx.size > 3
        searcher = Searcher(idx, encoder)
        request = SearchRequest.parse("low-rank adaptation 학습 비용", k=20, group="passage")
        vector = encoder.embed_query(request.query)
        dense = searcher.dense_scores(vector, None, ranking.CANDIDATES)
        lexical = idx.lexical_scores(idx.query_terms(request.query), None, ranking.CANDIDATES)
        fused = ranking.rrf([dense, lexical])
        pool = set(sorted(fused, key=lambda r: (-fused[r], r))[:3])
        hits = searcher.search(request).hits
        filtered = searcher.search(SearchRequest.parse(request.query, reviewer="김철수")).hits
    assert {h.passage.row for h in hits if h.maxsim is not None} == pool
    assert filtered and all(h.passage.reviewer == "김철수" for h in filtered)

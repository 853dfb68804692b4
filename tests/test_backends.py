"""The same behaviour from every storage backend (backends.py): the local FAISS + SQLite store, the
embedded Qdrant engine (`qdrant:PATH`) and the qdrant-client code path a Qdrant server is reached
by (`qdrant-memory:NAME`, its in-memory local mode), built from the same notes with the same fake encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CORPUS
from fakes import FakeEncoder
from search.backends import open_backend, open_writer
from search.cli import app
from search.errors import IndexBusy, ModelMismatch
from search.indexing.build import build_index
from search.notes.sections import Section
from search.rank.request import Mode, SearchRequest, parse_filters
from search.rank.searcher import Searcher
from search.storage import Filters, contents

pytest.importorskip("qdrant_edge")
pytest.importorskip("qdrant_client")

QDRANT = ["qdrant", "qdrant-memory"]  # each compared with the local backend
BACKENDS = ["local", *QDRANT]


def location(kind: str, folder: Path) -> str:
    return str(folder) if kind == "local" else f"{kind}:{folder}"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, str]:
    """tests/corpus indexed by each backend."""
    root = tmp_path_factory.mktemp("backends")
    out = {}
    for kind in BACKENDS:
        out[kind] = location(kind, root / kind)
        build_index([CORPUS], out[kind], FakeEncoder())
    return out


FILTERS = [Filters(), parse_filters(reviewer="김철수"), parse_filters(week="1-2"), parse_filters(topic="lora"),
           parse_filters(section="method"), parse_filters(reviewer="이영희", week="1")]


def keys(index, rows) -> list[tuple]:
    return sorted((p.path, p.topic_no, p.review_no, p.passage_no) for p in index.passages(rows))


@pytest.mark.parametrize("kind", QDRANT)
@pytest.mark.parametrize("filters", FILTERS, ids=str)
def test_filters_allow_the_same_passages(built, filters, kind):
    with open_backend(built["local"]) as local, open_backend(built[kind]) as qdrant:
        assert keys(local, local.rows_matching(filters)) == keys(qdrant, qdrant.rows_matching(filters))


@pytest.mark.parametrize("kind", QDRANT)
def test_a_filter_of_one_section_matches_only_it(built, kind):
    with open_backend(built[kind]) as qdrant:
        rows = qdrant.rows_matching(Filters(section=Section.METHOD))
        assert len(rows) and {p.section for p in qdrant.passages(rows)} == {"method"}


@pytest.mark.parametrize("kind", QDRANT)
def test_passages_papers_and_reviews_are_the_same(built, kind):
    with open_backend(built["local"]) as local, open_backend(built[kind]) as qdrant:
        assert local.size == qdrant.size
        assert local.passages() == qdrant.passages()
        assert local.papers() == qdrant.papers()
        assert {k: v for k, v in contents(local).items() if k != "created"} == {
            k: v for k, v in contents(qdrant).items() if k != "created"}
        first = local.passages()[0]
        assert local.review_at(first.file, first.line) == qdrant.review_at(first.file, first.line)
        assert qdrant.review_at(first.file, 10_000) == []
        assert local.paper_groups(range(local.size)) == qdrant.paper_groups(range(qdrant.size))
        assert np.allclose(local.vectors(), qdrant.vectors(), atol=1e-6)


QUERIES = ["위스퍼 음성인식", "LoRA 학습 비용", "low-rank adaptation", "데이터 잡음"]


@pytest.mark.parametrize("mode", [Mode.LEXICAL, Mode.DENSE, Mode.HYBRID])
@pytest.mark.parametrize("filters", [{}, {"reviewer": "김철수"}, {"week": "2"}], ids=str)
@pytest.mark.parametrize("kind", QDRANT)
def test_exact_modes_give_the_same_hits(built, mode, filters, kind):
    encoder = FakeEncoder()
    with open_backend(built["local"]) as local, open_backend(built[kind]) as qdrant:
        for query in QUERIES:
            request = SearchRequest.parse(query, k=10, mode=mode.value, **filters)
            a, b = Searcher(local, encoder).search(request), Searcher(qdrant, encoder).search(request)
            assert [h.passage for h in a.hits] == [h.passage for h in b.hits], query
            assert [h.score for h in a.hits] == pytest.approx([h.score for h in b.hits], abs=1e-4)


@pytest.mark.parametrize("kind", QDRANT)
def test_late_mode_ranks_alike_from_engine_maxsim(built, kind):
    """The engine's MaxSim runs on float16 states, the local one on 4-bit codes: scores agree to
    the codec's error and the best review is the same."""
    encoder = FakeEncoder()
    with open_backend(built["local"]) as local, open_backend(built[kind]) as qdrant:
        for query in QUERIES:
            request = SearchRequest.parse(query, k=5)
            a, b = Searcher(local, encoder).search(request), Searcher(qdrant, encoder).search(request)
            assert a.hits[0].passage.review_key == b.hits[0].passage.review_key, query
            assert [h.maxsim for h in a.hits] == pytest.approx([h.maxsim for h in b.hits], abs=0.03)


@pytest.mark.parametrize("kind", QDRANT)
def test_late_scores_are_means_over_the_query_tokens(built, kind):
    encoder = FakeEncoder()
    tokens = encoder.embed_query_tokens("LoRA 학습 비용")
    with open_backend(built["local"]) as local, open_backend(built[kind]) as qdrant:
        groups = local.paper_groups(range(local.size))
        a, b = local.late_scores(tokens, groups), qdrant.late_scores(tokens, groups)
        for level in ("paper", "review", "passage"):
            x, y = getattr(a, level), getattr(b, level)
            assert x.keys() == y.keys()
            assert [x[r] for r in x] == pytest.approx([y[r] for r in x], abs=0.03), level


def test_a_query_model_other_than_the_index_is_refused(built):
    class Other(FakeEncoder):
        model_id = "fake/other"

    for kind in BACKENDS:
        with open_backend(built[kind]) as index, pytest.raises(ModelMismatch):
            Searcher(index, Other())


def test_a_second_build_is_refused_while_one_runs(built):
    for kind in BACKENDS:
        with open_writer(built[kind]):
            with pytest.raises(IndexBusy):
                with open_writer(built[kind]):
                    pass


@pytest.mark.parametrize("kind", BACKENDS)
def test_cli_commands_answer_from_either_backend(built, kind, fake_model):
    runner = CliRunner()
    for args in (["query", "위스퍼 음성인식"], ["list"], ["related", "LoRA"], ["who", "음성 인식"], ["seen", "LoRA"], ["check"]):
        result = runner.invoke(app, [*args, "--index", built[kind]], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (args, result.output)


@pytest.mark.parametrize("kind", BACKENDS)
def test_the_service_picks_up_a_rebuild_on_either_backend(tmp_path, kind):
    """What serve, mcp and --watch run on: a long-lived reader that notices a new generation."""
    import shutil

    from search.service import SearchService

    notes = tmp_path / "notes"
    shutil.copytree(CORPUS, notes, ignore=shutil.ignore_patterns("*.jsonl", "2주차*"))
    where = location(kind, tmp_path / "idx")
    build_index([notes], where, FakeEncoder())
    service = SearchService(where, FakeEncoder())
    try:
        before = service.status()["passages"]
        shutil.copy(CORPUS / "2주차 정리.md", notes)
        build_index(None, where, FakeEncoder())
        assert service.status()["passages"] > before
        hits = service.search(SearchRequest.parse("LoRA", mode="lexical")).hits
        assert hits and all("LoRA" in h.passage.text or "lora" in h.passage.terms for h in hits[:1])
    finally:
        service.close()

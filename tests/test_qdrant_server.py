"""The Qdrant backend through qdrant-client (search/qdrant/server.py), on its in-memory local mode:
versioned builds inside one collection, the alias switch of a full build, the build lock, and the
one-line errors of locations that cannot be reached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CORPUS
from fakes import FakeEncoder
from search.backends import open_backend, open_writer
from search.cli import app
from search.errors import IndexBusy
from search.indexing.build import build_index
from search.rank.request import SearchRequest
from search.rank.searcher import Searcher

pytest.importorskip("qdrant_client")

from search.qdrant import server  # noqa: E402


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    shutil.copytree(CORPUS, tmp_path / "notes", ignore=shutil.ignore_patterns("*.jsonl"))
    return tmp_path / "notes"


def raw_points(where: str) -> list[dict]:
    """Every point payload of the collection the alias names, whatever build it belongs to."""
    target, alias = server._parse(where)
    client = server._connect(target)
    try:
        physical = server._physical(client, alias)
        points, offset = [], None
        while True:
            page, offset = client.scroll(physical, limit=1000, offset=offset, with_payload=True)
            points += [p.payload for p in page]
            if offset is None:
                return points
    finally:
        server._release(target)


def answers(where: str) -> list[tuple]:
    with open_backend(where) as index:
        hits = Searcher(index, FakeEncoder()).search(SearchRequest.parse("LoRA 학습 비용", k=5)).hits
        return [(h.passage.path, h.passage.line, round(h.score, 6)) for h in hits]


def test_a_build_that_dies_after_writing_leaves_readers_on_the_previous_build(notes, tmp_path, monkeypatch):
    where = f"qdrant-memory:{tmp_path / 'q'}"
    build_index([notes], where, FakeEncoder())
    with open_backend(where) as index:
        before, version = index.passages(), index.info.version
    expected = answers(where)
    (notes / "week9.md").write_text((notes / "week1.md").read_text(encoding="utf-8").replace("Whisper", "Wav2Vec"),
                                    encoding="utf-8")
    (notes / "week1.md").unlink()  # its points are marked removed by the build that dies
    calls = []
    upsert = server.ServerView.upsert

    def dies_on_the_third(self, points):
        calls.append(len(points))
        if len(calls) == 3:
            raise RuntimeError("the machine went away")
        return upsert(self, points)

    monkeypatch.setattr(server.ServerView, "upsert", dies_on_the_third)
    with pytest.raises(RuntimeError):
        build_index(None, where, FakeEncoder(), allow_remove=True)
    monkeypatch.undo()
    assert any(p.get("gen_from", 0) > 1 for p in raw_points(where))  # the dead build did write
    with open_backend(where) as index:
        assert index.passages() == before and index.info.version == version
    assert answers(where) == expected
    done = build_index(None, where, FakeEncoder(), allow_remove=True)
    live = [p for p in raw_points(where) if p.get("gen_to") == server.MAX_GEN]
    with open_backend(where) as index:
        assert {p.path for p in index.passages()} == {str(p) for p in notes.glob("*.md")}
        assert index.size == done.passages
        assert len([p for p in live if p["kind"] == "passage"]) == done.passages  # nothing the dead build left is live
        assert index.check().passages == done.passages


def test_points_a_build_removed_stay_for_one_build_then_go(notes, tmp_path):
    where = f"qdrant-memory:{tmp_path / 'q'}"
    build_index([notes], where, FakeEncoder())
    week = notes / "week1.md"
    week.write_text(week.read_text(encoding="utf-8").replace("68만 시간", "70만 시간"), encoding="utf-8")
    build_index(None, where, FakeEncoder())
    ended = [p for p in raw_points(where) if p.get("gen_to") == 2]
    assert ended and {p["kind"] for p in ended} == {"passage", "review", "paper"}  # still readable by build 1's readers
    week.write_text(week.read_text(encoding="utf-8").replace("70만 시간", "72만 시간"), encoding="utf-8")
    build_index(None, where, FakeEncoder())
    assert not [p for p in raw_points(where) if p.get("gen_to") == 2]


def test_a_full_build_writes_a_new_collection_and_the_old_one_goes_a_build_later(notes, tmp_path):
    where = f"qdrant-memory:{tmp_path / 'q'}"
    build_index([notes], where, FakeEncoder())
    target, alias = server._parse(where)
    client = server._connect(target)
    try:
        def collections() -> set[str]:
            return {c.name for c in client.get_collections().collections} - {f"{alias}-lock"}

        assert collections() == {f"{alias}-1"}
        build_index(None, where, FakeEncoder(), full=True)
        assert server._physical(client, alias) == f"{alias}-2" and collections() == {f"{alias}-1", f"{alias}-2"}
        build_index(None, where, FakeEncoder(), full=True)
        assert collections() == {f"{alias}-2", f"{alias}-3"}
    finally:
        server._release(target)
    assert answers(where)


def test_a_lock_left_by_a_dead_build_is_taken_over_once_stale(notes, tmp_path, monkeypatch):
    where = f"qdrant-memory:{tmp_path / 'q'}"
    build_index([notes], where, FakeEncoder())
    dead = open_writer(where).__enter__()  # a build that never leaves its block: its lock stays
    dead._client = None  # ...and never releases it
    server._release(dead.target)
    with pytest.raises(IndexBusy, match="another build is running"):
        build_index(None, where, FakeEncoder())
    monkeypatch.setattr(server, "LOCK_STALE", 0.0)
    assert build_index(None, where, FakeEncoder()).passages > 0


def one_line(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_server_locations_are_one_line_errors(notes, tmp_path, fake_model, monkeypatch):
    runner = CliRunner()
    line = one_line(runner.invoke(app, ["query", "x", "--index", "http://127.0.0.1:9/reviews"]))
    assert "cannot reach Qdrant at http://127.0.0.1:9/reviews" in line
    line = one_line(runner.invoke(app, ["index", str(notes), "--index", "http://127.0.0.1:9/reviews",
                                        "--model", fake_model.model_id]))
    assert "cannot reach Qdrant" in line
    assert "http(s)://HOST:PORT/COLLECTION" in one_line(runner.invoke(app, ["query", "x", "--index", "http://127.0.0.1:9"]))
    assert "no index at" in one_line(runner.invoke(app, ["query", "x", "--index", f"qdrant-memory:{tmp_path / 'none'}"]))
    assert "collection name" in one_line(runner.invoke(app, ["query", "x", "--index", "http://127.0.0.1:9/a%20b"]))


def test_a_collection_review_search_did_not_make_is_left_alone(notes, tmp_path, fake_model):
    where = f"qdrant-memory:{tmp_path / 'q'}"
    target, alias = server._parse(where)
    client = server._connect(target)
    try:
        client.create_collection(alias, vectors_config={})
    finally:
        server._release(target)
    runner = CliRunner()
    assert "no index at" in one_line(runner.invoke(app, ["query", "x", "--index", where]))
    line = one_line(runner.invoke(app, ["index", str(notes), "--index", where, "--model", fake_model.model_id]))
    assert "did not make" in line

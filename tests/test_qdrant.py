"""The Qdrant backend, embedded (search/qdrant/embedded.py) and through qdrant-client
(search/qdrant/server.py, on its in-memory local mode): incremental builds send only what changed, a failed
build leaves the live build answering, bad locations are one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CORPUS
from fakes import FakeEncoder
from search.backends import open_backend
from search.cli import app
from search.indexing.build import build_index

pytest.importorskip("qdrant_edge")
pytest.importorskip("qdrant_client")

from search.qdrant.embedded import EdgeEngine  # noqa: E402
from search.qdrant.server import MAX_GEN, ServerView  # noqa: E402

KINDS = ["qdrant", "qdrant-memory"]  # embedded, and the code path a Qdrant server is reached by
ENGINES = {"qdrant": EdgeEngine, "qdrant-memory": ServerView}


class Sent:
    """Records the points and deletions each build sends to the engine (the Engine's upsert and delete wrapped)."""

    def __init__(self, monkeypatch, kind: str):
        self.upserted: list[str] = []  # payload kind of every upserted point
        self.deleted = 0
        engine, sent = ENGINES[kind], self
        upsert, delete = engine.upsert, engine.delete

        def spy_upsert(self, points):
            sent.upserted += [p.payload["kind"] for p in points]
            return upsert(self, points)

        def spy_delete(self, ids):
            sent.deleted += len(ids)
            return delete(self, ids)

        monkeypatch.setattr(engine, "upsert", spy_upsert)
        monkeypatch.setattr(engine, "delete", spy_delete)

    def passages(self) -> int:
        return self.upserted.count("passage")


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    shutil.copytree(CORPUS, tmp_path / "notes", ignore=shutil.ignore_patterns("*.jsonl"))
    return tmp_path / "notes"


@pytest.mark.parametrize("kind", KINDS)
def test_adding_a_week_upserts_only_its_passages_and_removing_a_file_deletes_them(notes, tmp_path, monkeypatch, kind):
    where = f"{kind}:{tmp_path / 'q'}"
    new_week = notes / "2주차 정리.md"
    saved = new_week.read_bytes()
    new_week.unlink()
    first = build_index([notes], where, FakeEncoder())
    sent = Sent(monkeypatch, kind)
    new_week.write_bytes(saved)
    encoder = FakeEncoder()
    added = build_index(None, where, encoder)
    assert added.embedded == added.passages - first.passages > 0
    assert sent.passages() == added.embedded == len(encoder.embedded)  # only the new week's passages went out
    assert sent.deleted == 0
    with open_backend(where) as index:
        assert index.size == added.passages
        assert {p.path for p in index.passages()} == {str(p) for p in notes.glob("*.md")}

    sent.upserted.clear()
    again = build_index(None, where, FakeEncoder())
    assert not again.written and sent.upserted == []  # nothing changed: nothing sent, nothing written

    new_week.unlink()
    removed = build_index(None, where, FakeEncoder(), allow_remove=True)
    assert removed.embedded == 0 and removed.passages == first.passages
    assert sent.passages() == 0 and sent.deleted >= added.passages - first.passages
    with open_backend(where) as index:
        assert str(new_week) not in {p.path for p in index.passages()}


@pytest.mark.parametrize("kind", KINDS)
def test_a_changed_passage_is_sent_again_with_its_review_and_paper(notes, tmp_path, monkeypatch, kind):
    where = f"{kind}:{tmp_path / 'q'}"
    build_index([notes], where, FakeEncoder())
    sent = Sent(monkeypatch, kind)
    week = notes / "week1.md"
    week.write_text(week.read_text(encoding="utf-8").replace("68만 시간", "70만 시간"), encoding="utf-8")
    summary = build_index(None, where, FakeEncoder())
    assert summary.embedded == 1 and sent.upserted.count("passage") == 1
    assert sent.upserted.count("review") == 1 and sent.upserted.count("paper") == 1
    assert sent.deleted == 1  # the passage's old point


class Failing(FakeEncoder):
    def embed_passages_and_tokens(self, texts, progress=None):
        raise RuntimeError("the model died")


def test_a_build_that_fails_midway_leaves_the_live_generation_answering(notes, tmp_path):
    where = f"qdrant:{tmp_path / 'q'}"
    build_index([notes], where, FakeEncoder())
    with open_backend(where) as index:
        before = index.passages()
    (notes / "week9.md").write_text((notes / "week1.md").read_text(encoding="utf-8").replace("Whisper", "Wav2Vec"), encoding="utf-8")
    with pytest.raises(RuntimeError):
        build_index(None, where, Failing())
    with open_backend(where) as index:
        assert index.passages() == before
    assert not list((tmp_path / "q").glob(".tmp-*"))  # the half-written generation is gone


def one_line(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_locations_are_one_line_errors(notes, tmp_path, fake_model):
    runner = CliRunner()
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    line = one_line(runner.invoke(app, ["index", str(notes), "--index", f"qdrant:{blocked}/q", "--model", fake_model.model_id]))
    assert str(blocked) in line
    assert "no index at qdrant:" in one_line(runner.invoke(app, ["query", "x", "--index", f"qdrant:{tmp_path / 'none'}"]))
    where = tmp_path / "q"
    assert runner.invoke(app, ["index", str(notes), "--index", f"qdrant:{where}", "--model", fake_model.model_id]).exit_code == 0
    gen = where / (where / "CURRENT").read_text().strip()
    shutil.rmtree(gen / "shard" / "segments")
    line = one_line(runner.invoke(app, ["query", "x", "--index", f"qdrant:{where}"]))
    assert "shard" in line and "rebuild" in line
    assert runner.invoke(app, ["index", "--index", f"qdrant:{where}"]).exit_code == 0  # a rebuild repairs it
    assert runner.invoke(app, ["query", "위스퍼", "--index", f"qdrant:{where}"]).exit_code == 0


def test_a_local_index_is_not_read_as_a_qdrant_one(notes, tmp_path, fake_model):
    build_index([notes], tmp_path / "local", FakeEncoder())
    line = one_line(CliRunner().invoke(app, ["query", "x", "--index", f"qdrant:{tmp_path / 'local'}"]))
    assert "qdrant-edge format" in line and "rebuild" in line


def test_without_the_engine_installed_the_error_says_how_to_add_it(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_engine(name, *a, **k):
        if name == "qdrant_edge":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_engine)
    line = one_line(CliRunner().invoke(app, ["query", "x", "--index", f"qdrant:{tmp_path}"]))
    assert "pip install -e '.[qdrant]'" in line

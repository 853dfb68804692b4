"""The index store: atomic generations, locking, damage detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from search.indexing.build import build_index
from search.errors import IndexBusy, IndexDamaged, NoIndex
from search.store.bm25 import GROUPS_FILE
from search.store.index import CURRENT, PAPER_LEXICAL, Writer, faiss_index_for, open_index


def test_open_missing_index_says_there_is_none(tmp_path: Path):
    with pytest.raises(NoIndex, match="no index at") as e:
        open_index(tmp_path / "index")
    assert e.value.hint == "build"


def test_round_trip(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        ps = idx.passages()
        assert idx.size == len(ps) == idx.manifest.passages > 0
        assert [p.row for p in ps] == list(range(len(ps)))
        assert idx.manifest.model_id == fake_encoder.model_id and idx.manifest.dim == 64
        # the stored vectors are the encoder's vectors for the embedded text
        np.testing.assert_allclose(idx.vectors([0])[0], fake_encoder.embed_query(ps[0].embed_text), atol=1e-6)
        assert [p.row for p in idx.passages([2, 0])] == [2, 0]
        # every file of the generation is checksummed, and all are intact
        assert {"dense.faiss", "passages.sqlite"} <= set(idx.manifest.checksums) and not idx.damaged_files()


def test_review_at_returns_the_whole_review(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        first = idx.passages()[0]
        review = idx.review_at("week3.md", first.end_line + 2)
        assert [p.passage_no for p in review] == [1, 2] and review[0].reviewer == "이영희"
        assert idx.review_at(first.path, first.line) == review
        assert idx.review_at("week3.md", 1) == [] and idx.review_at("other.md", first.line) == []


def test_second_build_waits_for_none_it_fails_clearly(tmp_path: Path):
    with Writer(tmp_path / "idx"):
        with pytest.raises(IndexBusy, match="another build is running"):
            with Writer(tmp_path / "idx"):
                pass
    with Writer(tmp_path / "idx") as again:  # the lock is free again
        assert again.previous is None


def test_failed_build_leaves_the_live_index(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    before = (tmp_path / "idx" / CURRENT).read_text()

    class Boom(Exception):
        pass

    def explode(*a, **k):
        raise Boom()

    fake_encoder.embed_passages = explode
    (notes / "week4.md").write_text((notes / "week3.md").read_text(encoding="utf-8").replace("위스퍼", "새 내용"), encoding="utf-8")
    with pytest.raises(Boom):
        build_index([notes], tmp_path / "idx", fake_encoder)
    assert (tmp_path / "idx" / CURRENT).read_text() == before
    assert not list((tmp_path / "idx").glob(".tmp-*"))
    with open_index(tmp_path / "idx") as idx:
        assert idx.size > 0


def test_leftovers_of_a_killed_build_are_ignored_then_removed(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    stray = tmp_path / "idx" / ".tmp-gen-killed"
    stray.mkdir()
    (stray / "dense.faiss").write_bytes(b"half")
    with open_index(tmp_path / "idx") as idx:
        assert idx.size > 0
    build_index([notes], tmp_path / "idx", fake_encoder)
    assert not stray.exists()
    assert len(list((tmp_path / "idx").glob("gen-*"))) <= 2


@pytest.mark.parametrize("victim", ["dense.faiss", "passages.sqlite", "manifest.json"])
def test_damaged_files_give_a_rebuild_hint(notes: Path, tmp_path: Path, fake_encoder, victim: str):
    build_index([notes], tmp_path / "idx", fake_encoder)
    gen = tmp_path / "idx" / (tmp_path / "idx" / CURRENT).read_text().strip()
    data = (gen / victim).read_bytes()
    (gen / victim).write_bytes(data[: len(data) // 3])
    with pytest.raises(IndexDamaged, match="damaged") as e:
        with open_index(tmp_path / "idx") as idx:
            idx.passages()
    assert e.value.hint == "rebuild" and e.value.roots == [str(notes.resolve())]


def test_pointer_to_missing_generation_is_damage(tmp_path: Path):
    (tmp_path / CURRENT).write_text("gen-gone\n")
    with pytest.raises(IndexDamaged, match="missing generation"):
        open_index(tmp_path)


def test_format_version_mismatch_is_an_error(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    gen = tmp_path / "idx" / (tmp_path / "idx" / CURRENT).read_text().strip()
    manifest = json.loads((gen / "manifest.json").read_text())
    manifest["format"] = 99
    (gen / "manifest.json").write_text(json.dumps(manifest))
    (gen / "manifest.crc32").unlink()  # as another version would have written it
    with pytest.raises(IndexDamaged, match="format 99"):
        open_index(tmp_path / "idx")


def test_large_collections_switch_to_hnsw(monkeypatch):
    import search.store.index as store

    vectors = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert type(faiss_index_for(vectors)).__name__ == "IndexFlatIP"
    monkeypatch.setattr(store, "HNSW_FROM", 10)
    hnsw = faiss_index_for(vectors)
    assert type(hnsw).__name__ == "IndexHNSWFlat" and hnsw.hnsw.efSearch == store.HNSW_EF_SEARCH
    _, rows = hnsw.search(vectors[:5], 1)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_papers_summarise_the_index(notes: Path, tmp_path: Path, fake_encoder):
    f = notes / "week3.md"
    f.write_text(f.read_text(encoding="utf-8").replace("- **리뷰어**: 김철수", "- **리뷰어**: 김, 철수"), encoding="utf-8")
    build_index([notes], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        papers = idx.papers()
    assert [(p.week, p.topic_no, p.presenter, p.reviewers, p.passages) for p in papers] == [
        (3, 1, "김철수", ["이영희"], 2),
        (3, 2, "이영희", ["김, 철수"], 1),
    ]


def test_paper_bm25_is_stored_checksummed_and_scores_each_row_as_its_paper(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    week = notes / "week3.md"
    week.write_text(week.read_text(encoding="utf-8").replace("잡음이", "reverberation 잡음이"), encoding="utf-8")
    fake_encoder.embedded.clear()
    build_index([notes], tmp_path / "idx", fake_encoder)  # incremental: one passage changed
    assert len(fake_encoder.embedded) == 1 and "reverberation" in fake_encoder.embedded[0]
    with open_index(tmp_path / "idx") as idx:
        stored = {p.relative_to(idx.folder).as_posix() for p in (idx.folder / PAPER_LEXICAL).iterdir()}
        assert f"{PAPER_LEXICAL}/{GROUPS_FILE}" in stored and stored <= set(idx.manifest.checksums)
        passages = idx.passages()
        papers = {p.paper_key for p in passages}
        assert idx.paper_lexical.documents == len(papers) < idx.size == idx.paper_lexical.size
        for query in ("reverberation", "hallucination", "low-rank 행렬"):
            terms = idx.lexical.terms(query)
            paper, passage = idx.paper_lexical.scores_for(terms), idx.lexical.scores_for(terms)
            for key in papers:
                rows = [p.row for p in passages if p.paper_key == key]
                assert len(set(paper[rows].tolist())) == 1, (query, key)  # one score per paper
                assert (paper[rows[0]] > 0) == bool(passage[rows].max() > 0), (query, key)
        # the edited passage's new word reaches every row of its paper, and no other paper's
        terms = idx.lexical.terms("reverberation")
        hit = {p.paper_key for p in passages if idx.paper_lexical.scores_for(terms)[p.row] > 0}
        assert hit == {p.paper_key for p in passages if "reverberation" in p.text}


def test_a_generation_checksummed_with_blake2b_by_an_older_version_still_verifies(notes: Path, tmp_path: Path, fake_encoder):
    import hashlib

    build_index([notes], tmp_path / "idx", fake_encoder)
    gen = tmp_path / "idx" / (tmp_path / "idx" / CURRENT).read_text().strip()
    manifest = json.loads((gen / "manifest.json").read_text())
    manifest["checksums"] = {rel: hashlib.blake2b((gen / rel).read_bytes(), digest_size=16).hexdigest()
                             for rel in manifest["checksums"]}
    (gen / "manifest.json").write_text(json.dumps(manifest))
    (gen / "manifest.crc32").unlink()  # that version wrote none
    with open_index(tmp_path / "idx", verify=True) as idx:
        assert idx.check().passages == idx.size
    data = bytearray((gen / "dense.faiss").read_bytes())
    data[-5] ^= 1
    (gen / "dense.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexDamaged, match="dense.faiss is damaged"):
        open_index(tmp_path / "idx", verify=True)

"""Incremental builds: embed only what changed, drop what is gone, never lose data to bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


import pytest

from search.indexing.build import build_index, build_roots, passage_key
from search.errors import BadRequest
from search.rank.searcher import Searcher
from search.rank.request import SearchRequest
from search.store.index import open_index, read_settings

from conftest import CORPUS, SEEDS


def stored(index_dir: Path):
    with open_index(index_dir) as idx:
        return idx.passages()


def rows(index_dir: Path) -> list[tuple]:
    with open_index(index_dir) as idx:
        return sorted((p.file, p.topic_no, p.review_no, p.passage_no, p.text, p.key) for p in idx.passages())


def test_rerun_embeds_nothing(notes: Path, tmp_path: Path, fake_encoder):
    first = build_index([notes], tmp_path / "idx", fake_encoder)
    assert first.embedded == first.passages > 0 and first.reused == 0 and first.removed == 0
    again = build_index([notes], tmp_path / "idx", fake_encoder)
    assert (again.embedded, again.reused, again.removed) == (0, first.passages, 0)


def test_adding_a_week_embeds_only_that_week_and_equals_a_full_rebuild(tmp_path: Path, fake_encoder):
    corpus = tmp_path / "weeks"
    shutil.copytree(CORPUS, corpus)
    newest = corpus / "2025-03-10_week3.md"
    held_back = tmp_path / newest.name
    newest.rename(held_back)
    build_index([corpus], tmp_path / "inc", fake_encoder)
    held_back.rename(newest)
    fake_encoder.embedded.clear()
    summary = build_index([corpus], tmp_path / "inc", fake_encoder)
    new_week = build_index([newest], tmp_path / "only-new", type(fake_encoder)())
    assert summary.embedded == new_week.passages > 0 and summary.removed == 0
    with open_index(tmp_path / "only-new") as only_new:
        assert sorted(fake_encoder.embedded) == sorted(p.embed_text for p in only_new.passages())

    build_index([corpus], tmp_path / "full", fake_encoder, full=True)
    assert rows(tmp_path / "inc") == rows(tmp_path / "full")
    with open_index(tmp_path / "inc") as a, open_index(tmp_path / "full") as b:
        inc, full = Searcher(a, fake_encoder), Searcher(b, fake_encoder)
        for q in ["dense retrieval BM25", "masked language model", "hallucination 해결", "문장 임베딩"]:
            # Vectors are the same either way; token states are quantised with the codec fitted
            # when the index was first built, so late scores may differ in the second decimal
            # and near-ties further down may swap.
            for mode, top, tolerance in (("hybrid", 5, 1e-5), ("late", 3, 0.03)):
                request = SearchRequest.parse(q, k=5, mode=mode)
                a, b = inc.search(request).hits[:top], full.search(request).hits[:top]
                assert [h.passage.key for h in a] == [h.passage.key for h in b], (q, mode)
                assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=tolerance)


def test_editing_a_review_reembeds_only_the_changed_passage(notes: Path, tmp_path: Path, fake_encoder):
    first = build_index([notes], tmp_path / "idx", fake_encoder)
    f = notes / "week3.md"
    f.write_text(f.read_text(encoding="utf-8").replace("아쉬웠다.", "아쉬웠지만 재미있었다."), encoding="utf-8")
    s = build_index([notes], tmp_path / "idx", fake_encoder)
    assert (s.embedded, s.removed, s.reused) == (1, 1, first.passages - 1)
    assert any("재미있었다" in p.text for p in stored(tmp_path / "idx"))


def test_deleting_a_file_removes_all_its_passages(notes: Path, tmp_path: Path, fake_encoder):
    (notes / "week4.md").write_text((notes / "week3.md").read_text(encoding="utf-8").replace("위스퍼", "LoRA"), encoding="utf-8")
    build_index([notes], tmp_path / "idx", fake_encoder)
    n4 = sum(p.file == "week4.md" for p in stored(tmp_path / "idx"))
    (notes / "week4.md").unlink()
    s = build_index([notes], tmp_path / "idx", fake_encoder)
    assert s.removed == n4 and s.embedded == 0
    assert all(p.file != "week4.md" for p in stored(tmp_path / "idx"))


def test_a_file_that_turns_unreadable_keeps_its_passages(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    before = rows(tmp_path / "idx")
    (notes / "week3.md").write_bytes("# 3주차\n깨진 저장".encode("cp949"))
    s = build_index([notes], tmp_path / "idx", fake_encoder)
    assert rows(tmp_path / "idx") == before
    assert s.removed == 0
    assert any("kept its" in p.message for p in s.problems) and any("not UTF-8" in p.message for p in s.problems)


def test_model_change_reembeds_everything(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    other = type(fake_encoder)()
    other.model_id = "fake/other"
    s = build_index([notes], tmp_path / "idx", other)
    assert s.reused == 0 and s.embedded == s.passages
    assert read_settings(tmp_path / "idx").model_id == "fake/other"


def test_keys_depend_on_model_and_text():
    keys = {passage_key("m", "a"), passage_key("m", "b"), passage_key("n", "a")}
    assert len(keys) == 3
    assert passage_key("m", "a") == passage_key("m", "a")


def test_roots_and_model_are_remembered_even_across_formats(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    assert read_settings(tmp_path / "idx") == ([str(notes.resolve())], fake_encoder.model_id)
    assert read_settings(tmp_path / "none") == (None, None)
    # an index from before settings.json: the manifest, even of an older format, still tells
    (tmp_path / "idx" / "settings.json").unlink()
    gen = tmp_path / "idx" / (tmp_path / "idx" / "CURRENT").read_text().strip()
    manifest = json.loads((gen / "manifest.json").read_text())
    (gen / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    assert read_settings(tmp_path / "idx") == ([str(notes.resolve())], fake_encoder.model_id)


def test_roots_default_to_seeds_only_for_a_new_index_folder(notes: Path, tmp_path: Path, fake_encoder):
    assert build_roots(None, tmp_path / "new") == [os.path.realpath("seeds")]
    assert build_roots([notes], tmp_path / "new") == [str(notes.resolve())]
    build_index([notes], tmp_path / "idx", fake_encoder)
    assert build_roots(None, tmp_path / "idx") == [str(notes.resolve())]
    # with both the settings and the manifest gone, the folder still is not rebuilt from seeds/
    (tmp_path / "idx" / "settings.json").unlink()
    (tmp_path / "idx" / "CURRENT").write_text("gen-gone\n")
    with pytest.raises(BadRequest, match="does not record which notes"):
        build_roots(None, tmp_path / "idx")


def test_no_placeholder_is_ever_indexed(tmp_path: Path, fake_encoder):
    build_index([CORPUS, SEEDS], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        ps = idx.passages()
    assert all(p.reviewer and "(내용)" not in p.text for p in ps)
    assert len({p.review_key for p in ps}) == 9 + 4  # the corpus's real reviews and the seed week's


def test_unchanged_passages_reuse_their_terms_without_kiwi(notes: Path, tmp_path: Path, fake_encoder, monkeypatch):
    build_index([notes], tmp_path / "idx", fake_encoder)
    analysed: list[str] = []
    import search.indexing.build

    real = search.indexing.build.passage_terms
    monkeypatch.setattr(search.indexing.build, "passage_terms", lambda texts: analysed.extend(texts) or real(texts))
    build_index([notes], tmp_path / "idx", fake_encoder)
    assert analysed == []
    f = notes / "week3.md"
    f.write_text(f.read_text(encoding="utf-8").replace("아쉬웠다.", "아쉬웠지만 좋았다."), encoding="utf-8")
    build_index([notes], tmp_path / "idx", fake_encoder)
    assert len(analysed) == 1 and "좋았다" in analysed[0]
    with open_index(tmp_path / "idx") as idx:
        assert Searcher(idx, fake_encoder).search(SearchRequest.parse("hallucination", k=1, mode="lexical")).hits


def _paths(index: Path) -> set[str]:
    with open_index(index) as idx:
        return {p.path for p in idx.passages()}


def test_naming_another_folder_adds_to_what_the_index_covers(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    summary = build_index([CORPUS], tmp_path / "idx", fake_encoder)
    assert summary.removed == 0 and summary.dropped == []
    paths = _paths(tmp_path / "idx")
    assert any(p.startswith(str(notes.resolve())) for p in paths) and any(p.startswith(str(CORPUS.resolve())) for p in paths)
    assert read_settings(tmp_path / "idx").roots == [str(notes.resolve()), str(CORPUS.resolve())]
    # a plain rebuild covers both
    assert build_index(None, tmp_path / "idx", fake_encoder).removed == 0
    assert _paths(tmp_path / "idx") == paths


def test_replace_drops_the_other_folders_and_names_them(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes, CORPUS], tmp_path / "idx", fake_encoder)
    summary = build_index([CORPUS], tmp_path / "idx", fake_encoder, replace_roots=True)
    assert summary.dropped == [str(notes.resolve())] and summary.removed > 0
    assert all(p.startswith(str(CORPUS.resolve())) for p in _paths(tmp_path / "idx"))
    assert read_settings(tmp_path / "idx").roots == [str(CORPUS.resolve())]


def test_naming_an_empty_folder_on_a_full_index_changes_nothing(notes: Path, tmp_path: Path, fake_encoder):
    build_index([notes], tmp_path / "idx", fake_encoder)
    before = sorted(p.name for p in (tmp_path / "idx").iterdir())
    (tmp_path / "empty").mkdir()
    for replace_roots in (False, True):
        with pytest.raises(BadRequest, match="empty holds no .md notes; nothing changed"):
            build_index([tmp_path / "empty"], tmp_path / "idx", fake_encoder, replace_roots=replace_roots)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == before
    assert read_settings(tmp_path / "idx").roots == [str(notes.resolve())]


def test_a_covered_folder_emptied_is_refused_unless_allowed(notes: Path, tmp_path: Path, fake_encoder):
    other = tmp_path / "other"
    shutil.copytree(CORPUS, other)
    build_index([notes, other], tmp_path / "idx", fake_encoder)
    n = len(_paths(tmp_path / "idx"))
    for f in other.glob("*.md"):
        f.unlink()
    with pytest.raises(BadRequest, match=r"other holds no notes now: this build would remove \d+ of the index's"):
        build_index(None, tmp_path / "idx", fake_encoder)
    assert len(_paths(tmp_path / "idx")) == n
    summary = build_index(None, tmp_path / "idx", fake_encoder, allow_remove=True)
    assert summary.removed > 0 and all(p.startswith(str(notes.resolve())) for p in _paths(tmp_path / "idx"))


def test_a_covered_folder_that_vanished_says_how_to_stop_covering_it(notes: Path, tmp_path: Path, fake_encoder):
    other = tmp_path / "other"
    shutil.copytree(CORPUS, other)
    build_index([notes, other], tmp_path / "idx", fake_encoder)
    shutil.rmtree(other)
    with pytest.raises(BadRequest, match="other: no such file or folder; the index covers it: pass the folders to keep with --replace"):
        build_index(None, tmp_path / "idx", fake_encoder)
    assert build_index([notes], tmp_path / "idx", fake_encoder, replace_roots=True).dropped == [str(other.resolve())]


def test_a_new_index_from_a_folder_without_notes_is_a_warning(tmp_path: Path, fake_encoder):
    (tmp_path / "empty").mkdir()
    summary = build_index([tmp_path / "empty"], tmp_path / "idx", fake_encoder)
    assert summary.passages == 0
    assert [str(p) for p in summary.problems] == [f"{(tmp_path / 'empty').resolve()}: no .md notes found here"]


def test_a_failed_build_leaves_no_trace_in_a_new_index_folder(tmp_path: Path, fake_encoder):
    with pytest.raises(BadRequest, match="no such file or folder"):
        build_index([tmp_path / "nonexistent"], tmp_path / "idx", fake_encoder)
    assert not (tmp_path / "idx").exists()

    def broken(texts, progress=None):
        raise RuntimeError("the model failed")

    fake_encoder.embed_passages_and_tokens = broken
    with pytest.raises(RuntimeError):
        build_index([CORPUS], tmp_path / "idx", fake_encoder)
    assert not (tmp_path / "idx").exists()


def test_a_file_name_that_is_not_utf8_is_skipped_by_name_and_the_rest_lands(notes: Path, tmp_path: Path, fake_encoder):
    cp949 = os.fsencode(notes) + b"/14\xc1\xd6\xc2\xf7.md"  # "14주차.md" in cp949
    with open(cp949, "wb") as f:
        f.write((notes / "week3.md").read_bytes())
    summary = build_index([notes], tmp_path / "idx", fake_encoder)
    assert summary.files == 1 and summary.passages == 3
    (problem,) = [str(p) for p in summary.problems]
    assert problem == f"{notes.resolve()}/14\\xc1\\xd6\\xc2\\xf7.md: file name is not UTF-8, skipped"


def test_each_folder_without_notes_is_named_in_a_warning(notes: Path, tmp_path: Path, fake_encoder):
    (tmp_path / "empty").mkdir()
    summary = build_index([notes, tmp_path / "empty"], tmp_path / "idx", fake_encoder)
    assert summary.passages == 3
    assert [str(p) for p in summary.problems] == [f"{(tmp_path / 'empty').resolve()}: no .md notes found here"]


def test_a_build_that_changes_nothing_writes_nothing(notes: Path, tmp_path: Path, fake_encoder):
    first = build_index([notes], tmp_path / "idx", fake_encoder)
    live = (tmp_path / "idx" / "CURRENT").read_text()
    listing = sorted(p.name for p in (tmp_path / "idx").iterdir())
    again = build_index(None, tmp_path / "idx", fake_encoder)
    assert not again.written and first.written and again.embedded == 0 and again.passages == first.passages
    assert (tmp_path / "idx" / "CURRENT").read_text() == live
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == listing
    f = notes / "week3.md"
    f.write_text(f.read_text(encoding="utf-8").replace("아쉬웠다.", "아쉬웠다. 새 문장이다."), encoding="utf-8")
    changed = build_index(None, tmp_path / "idx", fake_encoder)
    assert changed.written and (tmp_path / "idx" / "CURRENT").read_text() != live
    assert build_index(None, tmp_path / "idx", fake_encoder, full=True).written  # --full always rebuilds

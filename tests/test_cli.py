"""The CLI through typer's CliRunner: output shapes, JSON contract, clean errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from search.cli import app
from search.store.index import open_index

runner = CliRunner()
JSON_KEYS = {"file", "line", "week", "topic", "presenter", "reviewer", "text", "score"}


def invoke(*args: str, columns: int = 200):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


@pytest.fixture
def built(notes: Path, tmp_path: Path, fake_model) -> Path:
    result = invoke("index", notes, "--index", tmp_path / "idx", "--model", fake_model.model_id)
    assert result.exit_code == 0, result.output
    return tmp_path / "idx"


def test_index_prints_a_summary(notes: Path, tmp_path: Path, fake_model):
    result = invoke("index", notes, "--index", tmp_path / "idx", "--model", fake_model.model_id)
    assert result.exit_code == 0
    assert "indexed 1 files, 2 reviews, 3 passages (3 embedded, 0 reused, 0 removed)" in result.output


def test_index_json_and_default_roots(built: Path):
    # no PATH: the roots the index was built from are reused
    result = invoke("index", "--index", built, "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert {"files", "reviews", "passages", "embedded", "reused", "removed", "seconds"} <= set(summary)
    assert (summary["files"], summary["embedded"], summary["reused"]) == (1, 0, 3)


def test_query_json_contract(built: Path):
    result = invoke("query", "hallucination 문제", "--index", built, "--json", "-k", "3", "--group", "passage")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert 1 <= len(hits) <= 3
    assert all(JSON_KEYS <= set(h) for h in hits)
    top = hits[0]
    assert top["file"] == "week3.md" and top["reviewer"] == "이영희" and top["week"] == 3
    assert top["presenter"] == "김철수" and "hallucination" in top["text"]
    assert isinstance(top["line"], int) and isinstance(top["score"], float)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_query_human_view(built: Path):
    result = invoke("query", "LoRA low-rank", "--index", built)
    assert result.exit_code == 0
    first = result.output.splitlines()[0]
    assert "LoRA: Low-Rank Adaptation" in first and "김철수" in first and "week 3" in first
    assert "week3.md:" in first
    assert "low-rank" in result.output.splitlines()[1]


def test_narrow_terminal_moves_file_line_below_the_header(built: Path, monkeypatch):
    monkeypatch.chdir(built.parent)
    result = invoke("query", "LoRA low-rank", "--index", built, columns=70)
    first, second = result.output.splitlines()[:2]
    assert "LoRA" in first and "김철수" in first and len(first) <= 70
    assert second.startswith("    notes/week3.md:") and "presenter" in second


def test_query_filters(built: Path):
    result = invoke("query", "학습", "--index", built, "--reviewer", "김철수", "--json")
    assert {h["reviewer"] for h in json.loads(result.stdout)} == {"김철수"}
    result = invoke("query", "학습", "--index", built, "--week", "4-9", "--json")
    assert result.exit_code == 2 and "no review matches: no weeks 4-9 in the index; the index holds weeks 3" in result.output
    result = invoke("query", "학습", "--index", built, "--week", "5-3")
    assert result.exit_code == 2 and "week range 5-3 is backwards; write 3-5" in result.output
    for name in ("김철", "김철쑤"):
        result = invoke("query", "학습", "--index", built, "--reviewer", name)
        assert result.exit_code == 2 and f"no reviewer is named '{name}'; closest: 김철수" in result.output
    result = invoke("query", "학습", "--index", built, "--reviewer", "없는사람")
    assert result.exit_code == 2 and "no reviewer is named '없는사람'; reviewers: 김철수, 이영희" in result.output
    result = invoke("related", "LoRA", "--index", built, "--topic", "Whisperr")
    assert result.exit_code == 2 and "no paper title contains 'Whisperr'; closest: Whisper" in result.output
    result = invoke("query", "학습", "--index", built, "--week", "nine")
    assert result.exit_code == 2 and "week takes a week" in result.output


def test_list(built: Path):
    result = invoke("list", "--index", built, "--json")
    data = json.loads(result.stdout)
    assert data["reviews"] == 2 and [p["topic"][:5] for p in data["papers"]] == ["Whisp", "LoRA:"]
    assert data["papers"][0]["reviewers"] == ["이영희"]
    human = invoke("list", "--index", built)
    assert human.exit_code == 0 and "Whisper" in human.output and "이영희" in human.output


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["query", "x", "--index", "{tmp}/none"], "no index at {tmp}/none; build one with `review-search index PATH ...", 1),
        (["query", "   ", "--index", "{tmp}/none"], "query is empty", 2),
        (["index", "{tmp}/missing.md", "--index", "{tmp}/i", "--model", "fake/trigram-64"], "no such file or folder", 2),
        (["query", "x", "-k", "5000", "--index", "{idx}"], "", 2),
        (["query", "x", "--week", "99999999999999999999", "--index", "{idx}"], "week takes a week", 2),
        (["related", "no such paper at all", "--index", "{idx}"], "shows the papers", 2),
    ],
)
def test_errors_are_one_line_without_traceback(built: Path, tmp_path: Path, args, message, code):
    result = invoke(*[a.format(tmp=tmp_path, idx=built) for a in args])
    assert result.exit_code == code, result.output
    assert message.format(tmp=tmp_path) in result.output
    assert "Traceback" not in result.output


def test_usage_errors_list_the_choices(built: Path):
    result = invoke("query", "x", "--mode", "magic", "--index", built)
    assert result.exit_code == 2 and "hybrid" in result.output and "lexical" in result.output
    assert "hybrid" in invoke("query", "--help").output


def test_internal_errors_exit_1_with_one_line(built: Path, monkeypatch):
    import search.rank.searcher

    def broken(self, request):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(search.rank.searcher.Searcher, "search", broken)
    result = invoke("query", "x", "--index", built)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("error: internal error") and len(result.output.strip().splitlines()) == 1


def test_bad_file_is_a_warning_not_a_failure(notes: Path, tmp_path: Path, fake_model):
    (notes / "broken.md").write_bytes(b"\xff\xfe\x00")
    result = invoke("index", notes, "--index", tmp_path / "idx", "--model", fake_model.model_id)
    assert result.exit_code == 0
    assert "warning:" in result.output and "broken.md" in result.output and "binary" in result.output


def test_control_characters_in_notes_are_neutralised(notes: Path, tmp_path: Path, fake_model):
    f = notes / "week3.md"
    f.write_text(f.read_text(encoding="utf-8").replace("아쉬웠다.", "아쉬웠다.\x1b[2J\x1b]0;pwned\x07"), encoding="utf-8")
    invoke("index", notes, "--index", tmp_path / "idx", "--model", fake_model.model_id)
    result = invoke("query", "아쉬웠다", "--index", tmp_path / "idx")
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\u001b" in result.output


def test_model_option_takes_a_sentence_transformers_folder(notes: Path, tmp_path: Path, e5_model_dir: Path):
    # the converted default model loaded as "any other" model: prompts come from its config
    result = invoke("index", notes, "--index", tmp_path / "idx", "--model", e5_model_dir, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == str(e5_model_dir)
    hits = json.loads(invoke("query", "LoRA 파인튜닝 비용", "--index", tmp_path / "idx", "--json", "-k", "1").stdout)
    assert hits[0]["topic"].startswith("LoRA")
    # re-indexing without --model keeps the index's model (nothing re-embedded)
    again = json.loads(invoke("index", "--index", tmp_path / "idx", "--json").stdout)
    assert again["model"] == str(e5_model_dir) and again["embedded"] == 0


def test_unknown_model_is_a_clean_error(notes: Path, tmp_path: Path):
    result = invoke("index", notes, "--index", tmp_path / "idx", "--model", tmp_path / "no-such-model")
    assert result.exit_code == 1 and "cannot load model" in result.output and "Traceback" not in result.output


def test_min_score_can_leave_nothing_and_says_so(built: Path):
    result = invoke("query", "hallucination", "--index", built, "--min-score", "0.999")
    assert result.exit_code == 0 and result.output.strip() == "no review matches with score >= 0.999"
    assert invoke("query", "hallucination", "--index", built, "--min-score", "nan").exit_code == 2
    hits = json.loads(invoke("query", "hallucination", "--index", built, "--min-score", "-1", "--json").stdout)
    assert hits and all(h["score"] >= -1 for h in hits)


def test_index_of_another_folder_keeps_the_first_and_replace_names_what_it_drops(built: Path, notes: Path, tmp_path: Path):
    from conftest import CORPUS

    added = invoke("index", CORPUS, "--index", built)
    assert added.exit_code == 0 and "0 removed" in added.output and "no longer covered" not in added.output
    replaced = invoke("index", CORPUS, "--replace", "--index", built)
    assert replaced.exit_code == 0, replaced.output
    assert f"no longer covered: {notes.resolve()}" in replaced.stderr


def test_index_of_an_empty_folder_on_a_full_index_exits_2_and_changes_nothing(built: Path, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    before = invoke("list", "--index", built, "--json").stdout
    result = invoke("index", tmp_path / "empty", "--index", built)
    assert result.exit_code == 2 and "holds no .md notes; nothing changed" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert invoke("list", "--index", built, "--json").stdout == before


def test_replace_and_watch_do_not_go_together(built: Path, notes: Path):
    result = invoke("index", notes, "--replace", "--watch", "--index", built)
    assert result.exit_code == 2 and "--replace and --watch do not go together" in result.output


def test_version_and_help_spellings():
    from importlib.metadata import version

    assert invoke("--version").stdout.strip() == f"review-search {version('review-search')}"
    assert "--k" not in invoke("query", "--help").output
    assert "PAPER" in invoke("related", "--help").output


def test_no_index_names_the_absolute_folder(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("query", "x")
    assert result.exit_code == 1 and f"no index at {tmp_path / 'index'}" in result.output
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("columns", [80, 60])
def test_narrow_output_keeps_every_file_line_whole(notes: Path, tmp_path: Path, fake_model, monkeypatch, columns: int):
    deep = tmp_path / "a-long-folder-name-for-the-group-notes" / "2026-spring-semester"
    deep.mkdir(parents=True)
    (notes / "week3.md").rename(deep / "000_1d3f9a_week3_reviews.md")
    invoke("index", deep, "--index", tmp_path / "idx", "--model", fake_model.model_id)
    monkeypatch.chdir(tmp_path)
    result = invoke("query", "LoRA low-rank", "--index", tmp_path / "idx", "-k", "3", columns=columns)
    assert result.exit_code == 0, result.output
    with open_index(tmp_path / "idx") as idx:
        lines = {f"{os.path.relpath(p.path)}:{p.line}" for p in idx.passages()}
    shown = [line for line in result.output.splitlines() if "000_1d3f9a" in line]
    assert shown and all(any(loc in line for loc in lines) for line in shown)
    assert all(len(line) <= columns for line in result.output.splitlines() if line not in shown)


def test_an_empty_topic_title_breaks_neither_seen_nor_related(notes: Path, tmp_path: Path, fake_model):
    f = notes / "week3.md"
    f.write_text(f.read_text(encoding="utf-8").replace("### 주제 2: LoRA: Low-Rank Adaptation of Large Language Models", "### 주제 2:"), encoding="utf-8")
    built = invoke("index", notes, "--index", tmp_path / "idx", "--model", fake_model.model_id)
    assert "topic has no title" in built.output
    for args in (["seen", "a query long enough for the fuzzy tier"], ["related", "Whisper robust speech"]):
        result = invoke(*args, "--index", tmp_path / "idx")
        assert result.exit_code in (0, 2) and "internal error" not in result.output, result.output


def test_overlong_paper_names_are_cut_and_not_echoed_whole(built: Path):
    name = "가" * 40_000
    for command in ("seen", "related"):
        result = invoke(command, name, "--index", built)
        assert "internal error" not in result.output and len(result.output) < 2_000, (command, len(result.output))

"""`seen`: has the group reviewed a paper, named by title, arXiv id/URL or DOI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from search.indexing.build import build_index
from search.cli import app
from search.rank.seen import find_identifiers, parse_identifier, seen
from search.store.index import open_index
from conftest import SEEDS

CALM = "Calm-Whisper: Reduce Whisper Hallucination On Non-Speech By Calming Crazy Heads Down"
ABSENT = "Whisper: Robust Speech Recognition via Large-Scale Weak Supervision"
runner = CliRunner()


@pytest.fixture(scope="module")
def seeds_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fakes import FakeEncoder

    folder = tmp_path_factory.mktemp("seen") / "idx"
    build_index([SEEDS], folder, FakeEncoder())
    return folder


@pytest.mark.parametrize(
    "text, ids",
    [
        ("see https://arxiv.org/abs/2505.03335v2 for details", ["arxiv:2505.03335"]),
        ("arxiv.org/pdf/2505.03335v1.pdf", ["arxiv:2505.03335"]),
        ("(arXiv:1706.03762) and arXiv: hep-th/9901001v3", ["arxiv:1706.03762", "arxiv:hep-th/9901001"]),
        ("https://doi.org/10.48550/arXiv.2505.03335", ["arxiv:2505.03335"]),
        ("DOI 10.1145/3442188.3445922.", ["doi:10.1145/3442188.3445922"]),
        ("version 2.0 of 1706 tokens, 3.14", []),
    ],
)
def test_find_identifiers(text, ids):
    assert find_identifiers(text) == ids


def test_parse_identifier():
    assert parse_identifier("2505.03335") == "arxiv:2505.03335"
    assert parse_identifier("2505.03335v2") == "arxiv:2505.03335"
    assert parse_identifier("https://arxiv.org/pdf/2505.03335v2") == "arxiv:2505.03335"
    assert parse_identifier("arxiv.org/abs/2505.03335") == "arxiv:2505.03335"
    assert parse_identifier("https://doi.org/10.1145/3442188.3445922") == "doi:10.1145/3442188.3445922"
    assert parse_identifier("10.1145/3442188.3445922") == "doi:10.1145/3442188.3445922"
    assert parse_identifier(CALM) is None


@pytest.mark.parametrize(
    "query, how",
    [
        ("Calm Whisper", "short name"),
        ("calm-whisper reduce whisper hallucination", "prefix"),
        ("calm-whisper: reduce whisper hallucination on non-speech by calming crazy heads down", "title"),
        # one typo, in the short name too, so no exact tier can catch it
        ("Calm-Wisper: Reduce Whisper Hallucination On Non-Speech By Calming Crazy Heads Down", "fuzzy"),
        ("Calm Wisper", "fuzzy"),
        ("calm-whisper reduce wisper hallucination", "fuzzy"),
        (f"{CALM} v2", "title"),
        ("Calm-Whisper: Calming Down Attention Heads (Interspeech version)", "short name"),
    ],
)
def test_seen_finds_the_seed_topic(seeds_index: Path, query: str, how: str):
    def no_model():
        raise AssertionError("a title match must not load the model")

    with open_index(seeds_index) as idx:
        result = seen(idx, query, no_model)
    assert result.reviewed and [m.topic.title for m in result.matches] == [CALM]
    match = result.matches[0]
    assert match.how == how
    assert match.topic.presenter == "장재후" and match.topic.reviewers == ["박민경"]
    assert match.topic.file == "000_1d3bebb296d4b218.md" and match.topic.line > 0


@pytest.mark.parametrize("query", [ABSENT, "Speech recognition", "Attention", "Zero", "Calm"])
def test_near_but_different_titles_are_not_matched_by_text(seeds_index: Path, query: str):
    with open_index(seeds_index) as idx:
        assert not seen(idx, query).reviewed


@pytest.mark.model
def test_not_reviewed_lists_the_closest_titles_and_versions_match_by_embedding(seeds_index: Path, e5_encoder):
    # Titles are embedded at query time, so the fake-built index serves the real model here.
    with open_index(seeds_index) as idx:
        absent = seen(idx, ABSENT, lambda: e5_encoder)
        other_wording = seen(idx, "Calming crazy attention heads to reduce hallucination of Whisper on non-speech", lambda: e5_encoder)
    assert not absent.reviewed and len(absent.closest) == 3
    assert absent.closest[0][0].title == CALM  # the nearest title is the other Whisper paper
    assert absent.closest[0][1] >= absent.closest[1][1] >= absent.closest[2][1]
    assert other_wording.reviewed and other_wording.matches[0].how == "similar"
    assert other_wording.matches[0].topic.title == CALM


def test_cli_seen_text_and_json(seeds_index: Path, fake_model):
    result = runner.invoke(app, ["seen", "calm whisper", "--index", str(seeds_index)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"reviewed: {CALM}")
    assert "presenter 장재후" in result.output and "reviewers: 박민경 (" in result.output
    assert "000_1d3bebb296d4b218.md:" in result.output
    data = json.loads(runner.invoke(app, ["seen", "Calm Whisper", "--index", str(seeds_index), "--json"]).stdout)
    assert data["reviewed"] is True and data["matches"][0]["reviewers"] == ["박민경"]
    assert {"title", "week", "file", "path", "line", "presenter", "reviews", "match"} <= set(data["matches"][0])
    assert data["closest"] == [] and data["mentioned_in"] == []


def test_cli_seen_empty_is_one_line(seeds_index: Path, fake_model):
    result = runner.invoke(app, ["seen", "  ", "--index", str(seeds_index)])
    assert result.exit_code == 2 and result.output.startswith("error: the paper is empty")
    assert len(result.output.strip().splitlines()) == 1


def test_cli_seen_not_reviewed_prints_closest(seeds_index: Path, fake_model):
    result = runner.invoke(app, ["seen", ABSENT, "--index", str(seeds_index)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "not reviewed; closest:"
    titles = {"Spurious Rewards", "Absolute Zero", "Calm-Whisper"}
    assert sum(any(t in line for t in titles) for line in lines) == 3


WEEK = """# 📚 7주차

### 주제 1: Some Paper: With A Subtitle
- **발표자**: 가

### 리뷰 1
- **리뷰어**: 나

논문: https://arxiv.org/abs/2505.03335v2
이 논문은 새로운 방법을 제안한다.

비교 대상인 Transformer(arXiv:1706.03762)보다 빠르다고 한다. DOI 10.1145/3442188.3445922 도 참고.

---
"""


def test_identifiers_own_and_mentioned(tmp_path: Path, fake_encoder):
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "w7.md").write_text(WEEK, encoding="utf-8")
    build_index([tmp_path / "n"], tmp_path / "idx", fake_encoder)
    with open_index(tmp_path / "idx") as idx:
        own = seen(idx, "https://arxiv.org/pdf/2505.03335v1")
        cited = seen(idx, "1706.03762")
        doi = seen(idx, "https://doi.org/10.1145/3442188.3445922")
        missing = seen(idx, "2401.00001")
    assert own.reviewed and own.matches[0].how == "arxiv" and own.matches[0].topic.title == "Some Paper: With A Subtitle"
    assert not cited.reviewed and [m.topic.title for m in cited.mentions] == ["Some Paper: With A Subtitle"]
    assert cited.mentions[0].reviewer == "나" and cited.mentions[0].line == 12
    assert not doi.reviewed and len(doi.mentions) == 1
    assert not missing.reviewed and not missing.mentions and missing.identifier == "arxiv:2401.00001"
    out = runner.invoke(app, ["seen", "arXiv:1706.03762", "--index", str(tmp_path / "idx")], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and out.output.startswith("not reviewed: no topic is arxiv:1706.03762; mentioned in:")
    assert "w7.md:12" in out.output

"""Evaluation metrics on hand-checked rankings, the queries file format, and the eval command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from search.cli import app
from search.errors import BadRequest
from search.rank.evaluate import LabelledQuery, Report, read_queries, score_query
from search.rank.request import Mode

from conftest import CORPUS

A, B, C, D = (("f.md", t, "r") for t in "ABCD")


def test_perfect_ranking():
    q = LabelledQuery("q", "x", "keyword", {A: 2, B: 1})
    r = score_query(q, [A, B, C], 0.9)
    assert (r.ndcg, r.mrr, r.recall5, r.hit1) == (1.0, 1.0, 1.0, 1.0)


def test_hand_computed_ranking():
    q = LabelledQuery("q", "x", "keyword", {A: 2, B: 1, D: 2})
    r = score_query(q, [C, B, A], 0.5)
    ideal = 2 + 2 / math.log2(3) + 1 / math.log2(4)
    assert r.ndcg == pytest.approx((1 / math.log2(3) + 2 / math.log2(4)) / ideal)
    assert r.mrr == 0.5 and r.recall5 == 0.5 and r.hit1 == 0.0


def test_grade_one_at_top_is_not_a_hit():
    r = score_query(LabelledQuery("q", "x", "k", {A: 1, B: 2}), [A, B], 1.0)
    assert r.hit1 == 0.0 and r.mrr == 1.0


def test_absent_queries_have_no_ranking_metrics_but_count():
    rep = Report("dense", [score_query(LabelledQuery("a", "x", "absent", {}), [A], 0.3),
                           score_query(LabelledQuery("q", "x", "keyword", {A: 2}), [A], 0.9)])
    s = rep.summary()
    assert s["absent"] == {"n": 1} and s["all"]["n"] == 2 and s["all"]["ndcg"] == 1.0


def test_read_queries_errors_name_file_and_line(tmp_path: Path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"id": "1", "query": "x", "kind": "k", "relevant": []}\n{"id": 2}\n', encoding="utf-8")
    with pytest.raises(BadRequest, match=r"q.jsonl:2: not a labelled query"):
        read_queries(f)
    f.write_text("", encoding="utf-8")
    with pytest.raises(BadRequest, match="no queries"):
        read_queries(f)


def test_dev_queries_parse(dev_corpus: Path):
    qs = read_queries(dev_corpus / "queries.jsonl")
    assert len(qs) == 25 and sum(q.kind == "absent" for q in qs) == 2
    assert sum(len(q.grades) for q in qs) == 50


def test_eval_command(tmp_path: Path, fake_model):
    # tests/corpus carries four labelled queries of its own, in the dev corpora's format
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(CORPUS), "--index", str(tmp_path / "i"), "--model", fake_model.model_id]).exit_code == 0
    result = runner.invoke(app, ["eval", str(CORPUS / "queries.jsonl"), "--index", str(tmp_path / "i"), "--mode", "all", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {m.value for m in Mode}
    for report in out.values():
        summary = report["summary"]
        assert summary["all"]["n"] == 4 and summary["absent"] == {"n": 1}
        assert 0 <= summary["all"]["ndcg"] <= 1
    # the keyword query's answer is found first by BM25 alone
    assert next(q for q in out["lexical"]["queries"] if q["id"] == "t1")["hit1"] == 1.0
    human = runner.invoke(app, ["eval", str(CORPUS / "queries.jsonl"), "--index", str(tmp_path / "i"), "--mode", "lexical"])
    assert human.exit_code == 0 and "crosslingual" in human.output and "nDCG@10" in human.output

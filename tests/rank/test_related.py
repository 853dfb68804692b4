"""Related reviews: matching a paper by title, excluding it, grouping, filters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from search.cli import app
from search.rank.request import Filters
from search.errors import AmbiguousTopic, TopicNotFound
from search.rank.related import match_topic, related_reviews
from search.notes.titles import initials
from search.store.index import open_index

TITLES = [
    "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
    "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    "Dense Passage Retrieval for Open-Domain Question Answering",
    "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks",
    "Attention Is All You Need",
]


@pytest.mark.parametrize(
    "query, title",
    [
        ("attention is all you need", TITLES[4]),  # exact, any case
        ("Siamese", TITLES[1]),  # unique substring
        ("DPR", TITLES[2]),  # acronym
        ("rag", TITLES[3]),
        ("Atention is all u need", TITLES[4]),  # fuzzy
        ("dense pasage retreival", TITLES[2]),
    ],
)
def test_match_topic(query, title):
    assert match_topic(query, TITLES) == title


def test_ambiguous_matches_are_listed_not_guessed():
    with pytest.raises(AmbiguousTopic) as e:
        match_topic("retrieval", TITLES)
    assert e.value.candidates == [TITLES[2], TITLES[3]]


def test_a_short_name_is_that_paper_not_every_title_containing_it():
    assert match_topic("bert", TITLES) == TITLES[0]  # BERT's short name; Sentence-BERT only contains it


def test_unknown_topic():
    with pytest.raises(TopicNotFound, match="no reviewed paper matches"):
        match_topic("diffusion models beat GANs", TITLES)


def test_initials():
    assert initials("Chain-of-Thought Prompting Elicits") == "COTPE"


@pytest.fixture
def index(corpus_index: Path):
    """tests/corpus: 6 papers, 9 reviews (Whisper, BERT and DPR have two each)."""
    with open_index(corpus_index) as idx:
        yield idx


def test_paper_itself_is_excluded_and_one_entry_per_review(index):
    title, entries = related_reviews(index, "Sentence-BERT", k=100)
    assert title == TITLES[1]
    keys = [e.hit.passage.review_key for e in entries]
    assert len(keys) == len(set(keys)) == 9 - 1  # every review but the paper's one
    assert all(e.hit.passage.topic != title for e in entries)
    assert [e.hit.score for e in entries] == sorted((e.hit.score for e in entries), reverse=True)


def test_group_by_paper_rolls_reviews_up(index):
    _, entries = related_reviews(index, "Sentence-BERT", k=100, group="paper")
    topics = [(e.hit.passage.path, e.hit.passage.topic_no) for e in entries]
    assert len(topics) == len(set(topics)) == 6 - 1  # 6 reviewed papers, minus this one
    whisper = [e for e in entries if "Speech Recognition" in e.hit.passage.topic][0]
    assert sorted(whisper.reviewers) == ["박민수", "이영희"]


def test_filters_apply_before_top_k(index):
    _, entries = related_reviews(index, "Sentence-BERT", k=2, filters=Filters(reviewer="김철수"))
    assert len(entries) == 2 and {e.hit.passage.reviewer for e in entries} == {"김철수"}
    _, entries = related_reviews(index, "Sentence-BERT", k=3, filters=Filters(weeks=(1, 1)))
    assert len(entries) == 3 and {e.hit.passage.week for e in entries} == {1}


def test_calm_whisper_neighbours_are_speech_reviews(real_index: Path):
    with open_index(real_index) as idx:
        _, entries = related_reviews(idx, "Calm-Whisper", k=2)
    assert {e.hit.passage.topic.split(":")[0] for e in entries} == {"SpecAugment"}


def test_related_command(index, fake_model):
    runner = CliRunner()
    out = runner.invoke(app, ["related", "DPR", "--index", str(index.folder.parent), "--json", "-k", "2"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["paper"] == TITLES[2] and len(data["related"]) == 2
    assert {"file", "line", "week", "topic", "reviewer", "score", "reviewers"} <= set(data["related"][0])
    amb = runner.invoke(app, ["related", "large language models", "--index", str(index.folder.parent)])
    assert amb.exit_code == 2 and "LoRA" in amb.output and "Chain-of-Thought" in amb.output and "Traceback" not in amb.output

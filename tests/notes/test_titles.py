"""The title matcher `seen` and `related` share: strict tiers say "this is that paper", loose ones resolve a loose name."""

from __future__ import annotations

import pytest

from search.notes.titles import initials, match_titles, normalise_title, short_name

TITLES = [
    "Calm-Whisper: Reduce Whisper Hallucination On Non-Speech By Calming Crazy Heads Down",
    "QLoRA: Efficient Finetuning of Quantized LLMs",
    "Dense Passage Retrieval for Open-Domain Question Answering",
    "Fast Inference from Transformers via Speculative Decoding",
    "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks",
]


def test_normalise_title_and_short_name():
    assert normalise_title("Calm-Whisper:  Reduce  WHISPER v2") == "calm whisper reduce whisper"
    assert normalise_title("ＢＥＲＴ（ｖ３）") == "bert"  # full-width forms fold, the version goes
    assert short_name("QLoRA: Efficient Finetuning") == "qlora"
    assert short_name("Attention Is All You Need") == ""
    assert initials("Chain-of-Thought Prompting Elicits") == "COTPE"


@pytest.mark.parametrize("query, title, how", [
    ("calm whisper", TITLES[0], "short name"),
    ("QLoRA: Efficient Finetuning of Quantized Large Language Models", TITLES[1], "short name"),
    ("qlora efficient finetuning", TITLES[1], "prefix"),
    ("dense passage retreival for open domain", TITLES[2], "fuzzy"),
    ("fast inference from transformers via speculative decoding v2", TITLES[3], "title"),
])
def test_strict_tiers_name_the_paper_for_both(query, title, how):
    for loose in (False, True):
        assert [(m.title, m.how) for m in match_titles(query, TITLES, loose=loose)] == [(title, how)]


@pytest.mark.parametrize("query, title, how", [
    ("speculative decoding", TITLES[3], "words"),
    ("DPR", TITLES[2], "acronym"),
    ("rag", TITLES[4], "acronym"),
])
def test_loose_tiers_only_resolve_names_of_reviewed_papers(query, title, how):
    assert match_titles(query, TITLES) == []  # not enough for `seen` to say "reviewed"
    assert [(m.title, m.how) for m in match_titles(query, TITLES, loose=True)] == [(title, how)]


def test_whole_words_only_and_ties_are_all_returned():
    assert match_titles("lora", TITLES, loose=True) == []  # not QLoRA
    assert [m.title for m in match_titles("retrieval", TITLES, loose=True)] == [TITLES[2], TITLES[4]]
    assert match_titles("whisper", TITLES) == []  # Calm-Whisper is not Whisper
    # a title inside the query is another paper; a title followed by more words is that paper
    assert match_titles("Improved Baselines with Visual Instruction Tuning", TITLES + ["Visual Instruction Tuning"]) == []
    assert [m.how for m in match_titles("Fast Inference from Transformers via Speculative Decoding ICML 2023", TITLES)] == ["prefix"]
    assert match_titles("   ", TITLES, loose=True) == []


@pytest.mark.parametrize("query", ["a long enough query for fuzzy", "Whisper", "' OR 1=1 --", "xx"])
def test_an_empty_title_is_never_named_and_breaks_nothing(query):
    for loose in (False, True):
        assert all(m.title for m in match_titles(query, ["", *TITLES], loose=loose))


@pytest.mark.parametrize("query", ["' OR 1=1 --", "1=1", "--", "a b c"])
def test_short_junk_does_not_resolve_through_the_loosest_tier(query):
    # WRatio scores "' OR 1=1 --" 85.5 against this title (a partial match on "1")
    assert match_titles(query, [*TITLES, "Scaling Speech Technology to 1,000+ Languages"], loose=True) == []

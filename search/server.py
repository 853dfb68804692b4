"""`review-search serve`: a small JSON API over HTTP that keeps the index and model loaded.

A one-shot `query` pays for loading the model and the index on every call; the
server pays once and then answers in milliseconds.

    GET /search?q=...&k=5&mode=hybrid&group=review&reviewer=...&topic=...&week=3-5&min_score=0.8&section=limitations
        200, a JSON array of hits, each the object `query --json` prints
    GET /health
        200, {"status": "ok", "passages": N, "model": "...", "index": "<generation folder>"}

Every error is a JSON object {"error": "..."}: 400 for bad parameters, 404 for
an unknown path, 501 for methods other than GET, 500 when the index or model
fails. Empty `reviewer`, `topic` and `week` values mean "no filter", as an
HTML form sends unfilled fields.

Threads: ThreadingHTTPServer answers each request on its own thread, but an
Index's SQLite connection may only be used by the thread that opened it, and
the encoder and the lexical index promise nothing either. All index work
therefore runs on one dedicated worker thread; searches are serialised, which
costs little when each takes milliseconds.

Rebuilds: before each request the worker reads the index folder's `CURRENT`
pointer (a few bytes) and reopens the index when it names a new generation,
so `review-search index` can add a week while the server runs. If the new
generation cannot be opened, the server keeps answering from the one it has.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from .embedding import Encoder
from .errors import BadRequest, ReviewSearchError
from .request import SearchRequest
from .service import SearchService

SEARCH_PARAMS = ("q", "k", "mode", "group", "reviewer", "topic", "week", "min_score", "section")


class ServerError(Exception):
    """The server cannot start (the address is taken or cannot be resolved)."""


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_host_header(host: str) -> bool:
    """True when a Host header names this machine by a loopback name or address."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return False
    return name is not None and is_loopback(name)


def parse_search(query_string: str) -> SearchRequest:
    """The request of a /search query string; raises BadRequest."""
    try:
        pairs = parse_qsl(query_string, keep_blank_values=True, max_num_fields=len(SEARCH_PARAMS) * 2)
    except ValueError:
        raise BadRequest("too many parameters") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in SEARCH_PARAMS:
            raise BadRequest(f"unknown parameter {name!r}; /search takes {', '.join(SEARCH_PARAMS)}")
        if name in params:
            raise BadRequest(f"parameter {name!r} given more than once")
        params[name] = value
    return SearchRequest.parse(
        params.get("q"), params.get("k"), params.get("mode"), params.get("group"),
        params.get("reviewer"), params.get("topic"), params.get("week"), params.get("min_score"),
        section=params.get("section"),
    )


class Handler(BaseHTTPRequestHandler):
    """Answers GET /search and GET /health; every response, errors included, is JSON."""

    server: "SearchServer"
    server_version = "review-search"

    def do_GET(self) -> None:
        """Route the request; failures become JSON errors and never reach the client as tracebacks."""
        url = urlsplit(self.path)
        if is_loopback(self.server.server_address[0]) and not _local_host_header(self.headers.get("Host", "")):
            # A web page on another site can point its own domain at 127.0.0.1 (DNS
            # rebinding) and read the notes; its requests carry that domain here.
            self._send(403, {"error": "this server answers only requests addressed to localhost"})
            return
        service = self.server.service
        routes: dict[str, Callable[[], Any]] = {
            "/search": lambda: [h.as_dict() for h in service.search(parse_search(url.query)).hits],
            "/health": service.status,
        }
        route = routes.get(url.path)
        if route is None:
            self._send(404, {"error": f"no such path {url.path!r}; use /search?q=... or /health"})
            return
        try:
            status, payload = 200, route()
        except ReviewSearchError as e:
            status, payload = e.status, {"error": str(e)}
        except Exception:
            self.log_error("internal error on %s\n%s", self.path, traceback.format_exc())
            status, payload = 500, {"error": "internal error; the server log has the details"}
        self._send(status, payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the base class raises itself (unsupported method, malformed request) as JSON too."""
        self.close_connection = True
        self._send(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """The access log line, unless the server was made with log_requests=False."""
        if self.server.log_requests:
            super().log_request(code, size)


class SearchServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose handlers search one index through a SearchService."""

    def __init__(self, address: tuple[str, int], index_dir: Path | str, encoder: Encoder | None, log_requests: bool):
        self.log_requests = log_requests
        self.service: SearchService | None = None  # server_close runs before it exists when binding fails
        # Bind before loading, so a taken port fails at once rather than after the model loads.
        try:
            super().__init__(address, Handler)
        except OSError as e:
            raise ServerError(f"cannot listen on {address[0]}:{address[1]} ({e.strerror or e})") from None
        try:
            self.service = SearchService(index_dir, encoder)
        except BaseException:
            super().server_close()
            raise

    def server_close(self) -> None:
        """Stop listening, then close the index."""
        super().server_close()
        if self.service is not None:
            self.service.close()


def make_server(
    index_dir: Path | str,
    host: str = "127.0.0.1",
    port: int = 8765,
    encoder: Encoder | None = None,
    log_requests: bool = True,
) -> SearchServer:
    """A server bound to host:port with the index and model loaded; call `serve_forever()` on it.

    `encoder` replaces the model the index names (tests use a fake); port 0
    picks a free port, readable from `server.server_address`. Raises
    ServerError when it cannot listen, StoreError or EncoderError when the
    index or model cannot be loaded.
    """
    return SearchServer((host, port), index_dir, encoder, log_requests)

"""`review-search serve`: a small JSON API over HTTP that keeps the index and model loaded.

A one-shot `query` pays for loading the model and the index on every call; the
server pays once and then answers in milliseconds.

    GET /search?q=...&k=5&mode=hybrid&group=review&reviewer=...&topic=...&week=3-5&min_score=0.8
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
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .embedding import Encoder, EncoderError
from .ranking import Filters, Searcher
from .store import CURRENT, StoreError, open_index

SEARCH_PARAMS = ("q", "k", "mode", "group", "reviewer", "topic", "week", "min_score")
MAX_K = 1000  # the CLI's limit too
T = TypeVar("T")


class ServerError(Exception):
    """The server cannot start (the address is taken or cannot be resolved)."""


class BadRequest(ValueError):
    """A request the client must change; answered with 400 and the message."""


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


def _read_pointer(index_dir: Path) -> str | None:
    try:
        return (index_dir / CURRENT).read_text(encoding="utf-8").strip()
    except OSError:
        return None


class SearchService:
    """The loaded index and model; every use runs on its single worker thread (see module doc)."""

    def __init__(self, index_dir: Path | str, encoder: Encoder | None = None):
        self.index_dir = Path(index_dir)
        self._given_encoder = encoder
        self._searcher: Searcher | None = None
        self._seen: str | None = None  # the CURRENT content last acted on
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-search-index")
        self._closed = False
        try:
            self._run(self._current)
        except BaseException:
            self._worker.shutdown()
            raise

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return self._worker.submit(fn, *args).result()

    def _current(self) -> Searcher:
        pointer = _read_pointer(self.index_dir)
        if self._searcher is not None and pointer in (None, self._seen):
            return self._searcher
        # Remember the pointer before trying it, so a generation that fails to open
        # is tried once, not on every request.
        self._seen = pointer
        try:
            searcher = self._open()
        except (StoreError, EncoderError) as e:
            if self._searcher is None:
                raise
            print(f"warning: keeping {self._searcher.index.folder.name}: {e}", file=sys.stderr)
            return self._searcher
        if self._searcher is not None:
            self._searcher.index.close()
        self._searcher = searcher
        self._seen = searcher.index.folder.name
        return searcher

    def _open(self) -> Searcher:
        index = open_index(self.index_dir)
        try:
            encoder = self._given_encoder
            old = self._searcher
            if encoder is None and old is not None and old.encoder.model_id == index.manifest.model_id:
                encoder = old.encoder
            searcher = Searcher(index, encoder)
            # Load the model and BM25 now, so no request pays for them.
            searcher.encoder
            searcher.index.lexical
        except BaseException:
            index.close()
            raise
        return searcher

    def _search(self, query: str, k: int, mode: str, group: str, filters: Filters, min_score: float | None) -> list[dict]:
        hits = self._current().search(query, k=k, mode=mode, group=group, filters=filters, min_score=min_score)
        return [h.as_dict() for h in hits]

    def search(
        self, query: str, k: int = 5, mode: str = "hybrid", group: str = "review",
        filters: Filters = Filters(), min_score: float | None = None,
    ) -> list[dict]:
        """Hits for `query` as `query --json` objects, from the live generation of the index."""
        return self._run(self._search, query, k, mode, group, filters, min_score)

    def _health(self) -> dict:
        index = self._current().index
        return {"status": "ok", "passages": index.size, "model": index.manifest.model_id, "index": index.folder.name}

    def health(self) -> dict:
        """Status, passage count, model and generation folder of the live index."""
        return self._run(self._health)

    def _close(self) -> None:
        if self._searcher is not None:
            self._searcher.index.close()
            self._searcher = None

    def close(self) -> None:
        """Close the index and stop the worker thread; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._run(self._close)
        self._worker.shutdown()


def parse_search(query_string: str) -> dict:
    """The keyword arguments of SearchService.search from a /search query string; raises BadRequest."""
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
    query = params.get("q", "")
    if not query.strip():
        raise BadRequest("the query is empty; give some words to search for with ?q=...")
    try:
        k = int(params.get("k", "5"))
    except ValueError:
        k = 0
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k takes a whole number from 1 to {MAX_K}, not {params['k']!r}")
    try:
        filters = Filters.parse(params.get("reviewer"), params.get("topic"), params.get("week"))
    except ValueError:
        raise BadRequest(f"week takes a week (3) or a range (3-5), not {params.get('week')!r}") from None
    try:
        min_score = float(params["min_score"]) if params.get("min_score", "").strip() else None
    except ValueError:
        raise BadRequest(f"min_score takes a number, not {params['min_score']!r}") from None
    return {
        "query": query, "k": k, "mode": params.get("mode", "hybrid"), "group": params.get("group", "review"),
        "filters": filters, "min_score": min_score,
    }


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
            "/search": lambda: service.search(**parse_search(url.query)),
            "/health": service.health,
        }
        route = routes.get(url.path)
        if route is None:
            self._send(404, {"error": f"no such path {url.path!r}; use /search?q=... or /health"})
            return
        try:
            status, payload = 200, route()
        except ValueError as e:  # BadRequest, and the library's own checks (unknown mode or group)
            status, payload = 400, {"error": str(e)}
        except (StoreError, EncoderError) as e:
            status, payload = 500, {"error": str(e)}
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

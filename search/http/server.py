"""`review-search serve`: the JSON API, the search page and MCP over HTTP, on Starlette under uvicorn.

One loaded `SearchService` answers everything, so the model and the index are
paid for once.

    GET /search?q=...&k=5&mode=hybrid&group=review&reviewer=...&topic=...&week=3-5&min_score=0.8&section=limitations
        the JSON array of hits `query --json` prints
    GET /related?paper=...&k=5&group=review|paper&reviewer=&topic=&week=
        {"paper": title, "related": [...]}, as `related --json`
    GET /papers       what `list --json` prints
    GET /passage?file=...&line=N
        the review covering that line, whole, with its metadata
    GET /health       {"status": "ok", "passages": N, "model": ..., "index": <generation>, ...}
    GET /             the search page (pages.py); /papers, /related and /passage
                      answer in HTML when the browser asks for it (Accept: text/html)
    /mcp              MCP's streamable HTTP (search/mcp.py)

Errors are {"error": "..."} with the status of the library's error family
(400 bad input, 404 unknown paper or passage, 503 no index...); anything
unexpected is logged with its traceback and answered with a generic 500.
Unknown or repeated parameters are a 400. Blank `reviewer`, `topic` and
`week` mean "no filter", as an HTML form sends unfilled fields.

Who may ask (see `Guard`): bound to loopback, only requests addressed to a
loopback name are answered (a page on another site can point its domain at
127.0.0.1 and read the notes; its requests carry that domain). Bound to any
other address, every route needs the access token.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ServerError
from ..mcp import mcp_asgi
from ..model.protocol import Encoder
from ..service import SearchService
from ..storage import review_dict
from .pages import Pages
from .params import (PASSAGE_PARAMS, RELATED_PARAMS, SEARCH_PARAMS, _json, answer, parse_passage, parse_related, parse_search,
                     query_params, wants_html)

TOKEN_ENV = "REVIEW_SEARCH_TOKEN"
TOKEN_COOKIE = "review_search_token"

# Connection limits: a client may keep an idle connection this long, must finish
# sending its request line and headers within HEADER_TIMEOUT, may send at most
# MAX_HEADER_BYTES of them (h11 and Guard), and beyond MAX_CONCURRENCY requests in
# progress the server answers 503 at once instead of queueing (InFlightLimit).
# Idle connections hold no slot: uvicorn's own limit_concurrency counts open
# connections, so 64 silent sockets from any local process denied every request.
KEEP_ALIVE_TIMEOUT = 5
HEADER_TIMEOUT = 10.0
MAX_HEADER_BYTES = 16 * 1024
# Only /mcp takes a body, a JSON-RPC call whose longest useful argument is a 500-character
# query (a paper name: 300): this is room for that many times over. A 300,000-character
# `related` (879 KB) once held the index thread for 12 s.
MAX_BODY_BYTES = 64 * 1024
MAX_CONCURRENCY = 64
LISTEN_BACKLOG = 1024  # connections the kernel completes before the server accepts them

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # a ?token= URL must not leak to other sites
    (b"x-frame-options", b"DENY"),
]


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_HOST_HEADER = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::\d{1,5})?")


def local_host_header(value: str) -> bool:
    """True when a Host header is exactly a loopback name or address, with an optional port.

    Parsed strictly rather than with a URL parser: `evil.com\\@localhost` is a
    URL whose host is localhost, but as a Host header it names evil.com.
    """
    m = _HOST_HEADER.fullmatch(value)
    if m is None:
        return False
    return is_loopback(m["v6"] or m["name"].lower().rstrip("."))


def resolve_token(host: str, given: str | None) -> tuple[str | None, bool]:
    """The access token to require and whether it was generated here.

    `given` (from --token) wins, then $REVIEW_SEARCH_TOKEN; either one turns
    the check on even on loopback. Without them, a loopback server needs no
    token and any other gets a fresh random one, which the caller must show.
    """
    token = given or os.environ.get(TOKEN_ENV) or None
    if token is not None or is_loopback(host):
        return token, False
    return secrets.token_urlsafe(24), True


class InFlightLimit:
    """ASGI middleware: at most `limit` HTTP requests in progress; past it, 503 at once.

    One event loop runs every request, so a plain counter is exact.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await _json(503, {"error": "the server is busy; try again in a moment"}, {"Retry-After": "1"})(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def _capped(receive: Receive) -> Receive:
    """`receive` for a body of unknown length: past MAX_BODY_BYTES the app is told the client left."""
    seen = 0

    async def capped() -> dict:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        return {"type": "http.disconnect"} if seen > MAX_BODY_BYTES else message

    return capped


class Guard:
    """ASGI middleware in front of every route (page, API, static files, /mcp): host check and access token.

    The token is accepted as `Authorization: Bearer`, as a `token` query
    parameter (a browser's first visit, which is then redirected to the same
    URL without it) or from the HttpOnly SameSite cookie that visit sets.
    """

    def __init__(self, app: ASGIApp, *, loopback: bool, token: str | None):
        self.app = app
        self.loopback = loopback
        self.token = token.encode() if token else None

    def _valid(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token or b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope.get("headers", [])) > MAX_HEADER_BYTES:
            # h11's own limit only applies while headers arrive in pieces
            await _json(431, {"error": "request headers too large"})(scope, receive, send)
            return
        request = Request(scope)
        length = request.headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _json(413, {"error": f"request body over {MAX_BODY_BYTES // 1024} KiB"})(scope, receive, send)
            return
        if not length and "chunked" in request.headers.get("transfer-encoding", "").lower():
            receive = _capped(receive)
        if self.loopback and not local_host_header(request.headers.get("host", "")):
            await _json(403, {"error": "this server answers only requests addressed to localhost"})(scope, receive, send)
            return
        if self.token is not None:
            pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            from_url = [v for k, v in pairs if k == "token"]
            if from_url:
                # Strip it in place, so routes see their own parameters and the access log never shows it.
                scope["query_string"] = urlencode([(k, v) for k, v in pairs if k != "token"]).encode()
            auth = request.headers.get("authorization", "")
            bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
            cookie = request.cookies.get(TOKEN_COOKIE)
            if not (self._valid(bearer) or self._valid(cookie) or (len(from_url) == 1 and self._valid(from_url[0]))):
                await _json(
                    401, {"error": "an access token is required: open the address `serve` printed, "
                                   "or send `Authorization: Bearer TOKEN`"},
                    {"WWW-Authenticate": "Bearer"},
                )(scope, receive, send)
                return
            if from_url and scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and wants_html(request):
                query = scope["query_string"].decode()
                response = RedirectResponse(scope["path"] + (f"?{query}" if query else ""), status_code=303)
                response.set_cookie(TOKEN_COOKIE, from_url[0], httponly=True, samesite="strict", path="/")
                await response(scope, receive, send)
                return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in SECURITY_HEADERS if h[0] not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def api_routes(service: SearchService, pages: Pages) -> list[Route]:
    """The JSON API; /papers, /related and /passage hand browsers to `pages`, the HTML side."""

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        # The service runs index work on its own thread; waiting here keeps the event loop free.
        return await run_in_threadpool(fn, *args)

    async def search(request: Request) -> Response:
        result = await call(service.search, parse_search(query_params(request, SEARCH_PARAMS)))
        return _json(200, [h.as_dict() for h in result.hits])

    async def health(request: Request) -> Response:
        query_params(request, ())
        return _json(200, await call(service.status))

    async def papers(request: Request) -> Response:
        query_params(request, ())
        if wants_html(request):
            return await pages.papers(request)
        return _json(200, await call(service.contents))

    async def related(request: Request) -> Response:
        q = parse_related(query_params(request, RELATED_PARAMS))
        if wants_html(request):
            return await pages.related(request, q)
        title, entries = await call(service.related, q.paper, q.k, q.group, q.filters)
        return _json(200, {"paper": title, "related": [e.as_dict() for e in entries]})

    async def passage(request: Request) -> Response:
        file, line = parse_passage(query_params(request, PASSAGE_PARAMS))
        if wants_html(request):
            return await pages.review(request, file, line)
        return _json(200, review_dict(await call(service.review, file, line)))

    return [
        Route("/search", answer(search)),
        Route("/health", answer(health)),
        Route("/papers", answer(papers, pages.error)),
        Route("/related", answer(related, pages.error)),
        Route("/passage", answer(passage, pages.error)),
    ]


def create_app(service: SearchService, *, host: str, token: str | None) -> ASGIApp:
    """The whole server as one ASGI app for `host`: page, API, static files and /mcp, all behind `Guard`."""
    pages = Pages(service)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = (f"no such path {request.url.path!r}; try /, /search?q=..., /papers or /health"
                   if exc.status_code == 404 else exc.detail)
        if wants_html(request):
            return pages.error(request, exc.status_code, message)
        return _json(exc.status_code, {"error": message}, getattr(exc, "headers", None))

    # /mcp: MCP's streamable HTTP (search/mcp.py), behind the same Guard as the rest;
    # its session manager runs for the app's life.
    mcp = mcp_asgi(service, host=host)
    routes = [*pages.routes(), *api_routes(service, pages), Route("/mcp", endpoint=mcp.app, methods=["GET", "POST", "DELETE"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lambda app: mcp.lifespan())
    return InFlightLimit(Guard(app, loopback=is_loopback(host), token=token), MAX_CONCURRENCY)


def log_to_stderr() -> None:
    """Send the server's log (start-up, access lines, logged errors) to stderr, one plain line each.

    Set on uvicorn's own logger: imported libraries may already have put a
    handler on the root logger, which would make logging.basicConfig a no-op.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("uvicorn")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request's line and headers.

    uvicorn times out idle keep-alive connections but not a client that sends
    its headers a byte at a time; without this, a few such clients would hold
    every connection slot.
    """

    header_timeout = HEADER_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm()  # part of a request line or headers: the clock runs
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.header_timeout, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        busy = self.cycle is not None and not self.cycle.response_complete
        if self.conn.their_state is h11.IDLE and not busy:
            self.transport.close()


def _raise_open_file_limit() -> None:
    """Let the server hold as many connections as the system allows: each open socket is a file,
    and a soft limit of 1,024 would stop accepting (every request waiting) at ~1,000 idle ones."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):  # not on Windows; or not allowed: keep the limit
        pass


class SearchServer:
    """A bound socket, a loaded SearchService and the uvicorn server that joins them."""

    def __init__(
        self,
        address: tuple[str, int],
        index_dir: Path | str,
        encoder: Encoder | None,
        log_requests: bool,
        token: str | None,
        header_timeout: float = HEADER_TIMEOUT,
    ):
        host, port = address
        _raise_open_file_limit()
        # Bind before loading, so a taken port fails at once rather than after the model loads.
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
            # With getaddrinfo's protocol: asyncio sets TCP_NODELAY only on sockets whose proto
            # is IPPROTO_TCP, and without it every reply on a kept-alive connection waited
            # for the client's delayed ACK (44 ms a request, measured).
            family, kind, proto = infos[0][:3]
            self.socket = socket.socket(family, kind, proto)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(infos[0][4])
            self.socket.listen(LISTEN_BACKLOG)
        except OSError as e:
            raise ServerError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
        self.server_address = self.socket.getsockname()[:2]
        try:
            self.service = SearchService(index_dir, encoder)
        except BaseException:
            self.socket.close()
            raise
        protocol = type("Protocol", (_Protocol,), {"header_timeout": header_timeout})
        self.app = create_app(self.service, host=host, token=token)
        config = uvicorn.Config(
            self.app, http=protocol, lifespan="auto", log_config=None, access_log=log_requests,
            timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_graceful_shutdown=5,
            server_header=False, proxy_headers=False,
        )
        self._uvicorn = uvicorn.Server(config)
        self._stopped = threading.Event()
        self._stopped.set()

    def serve_forever(self) -> None:
        """Answer requests until `shutdown()` (or Ctrl-C, when called on the main thread)."""
        self._stopped.clear()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 10) -> None:
        """Ask a running `serve_forever` to finish its requests and return; waits for it."""
        self._uvicorn.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        """Stop listening, then close the index."""
        self.socket.close()
        self.service.close()


def make_server(
    index_dir: Path | str,
    host: str = "127.0.0.1",
    port: int = 8765,
    encoder: Encoder | None = None,
    log_requests: bool = True,
    token: str | None = None,
    header_timeout: float = HEADER_TIMEOUT,
) -> SearchServer:
    """A server bound to host:port with the index and model loaded; call `serve_forever()` on it.

    `encoder` replaces the model the index names (tests use a fake); port 0
    picks a free port, readable from `server.server_address`. `token`, when
    set, is required of every request (see `resolve_token`). Raises
    ServerError when it cannot listen, and the library's errors when the
    index or model cannot be loaded.
    """
    return SearchServer((host, port), index_dir, encoder, log_requests, token, header_timeout)

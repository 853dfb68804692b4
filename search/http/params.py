"""The HTTP side's parameters and answers, shared by the JSON API (server.py) and the
page (pages.py): which query parameters each route takes, how they become the
library's requests, and how library errors become status codes.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import BadRequest, ReviewSearchError
from ..rank.request import RelatedRequest, SearchRequest

log = logging.getLogger("uvicorn.error")

SEARCH_PARAMS = ("q", "k", "mode", "group", "reviewer", "topic", "week", "min_score", "section")
RELATED_PARAMS = ("paper", "k", "group", "reviewer", "topic", "week")
PASSAGE_PARAMS = ("file", "line")
MAX_LINE = 10_000_000  # no note has more lines than this; bounds what reaches SQLite


class _JSON(JSONResponse):
    media_type = "application/json; charset=utf-8"  # Starlette adds the charset to text/* only


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return _JSON(payload, status_code=status, headers=headers)


def wants_html(request: Request) -> bool:
    """Whether the client is a browser asking for a page rather than a program asking for JSON."""
    return "text/html" in request.headers.get("accept", "")


def query_params(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The request's query parameters; unknown or repeated ones raise BadRequest."""
    try:
        pairs = parse_qsl(request.url.query, keep_blank_values=True, max_num_fields=max(len(allowed), 1) * 2)
    except ValueError:
        raise BadRequest("too many parameters") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise BadRequest(f"unknown parameter {name!r}; {request.url.path} takes {', '.join(allowed)}")
        if name in params:
            raise BadRequest(f"parameter {name!r} given more than once")
        params[name] = value
    return params


def parse_search(params: dict[str, str]) -> SearchRequest:
    """The search request of /search (and the page) parameters; raises BadRequest."""
    return SearchRequest.parse(
        params.get("q"), k=params.get("k"), mode=params.get("mode"), group=params.get("group"),
        reviewer=params.get("reviewer"), topic=params.get("topic"), week=params.get("week"),
        min_score=params.get("min_score"), section=params.get("section"),
    )


def parse_related(params: dict[str, str]) -> RelatedRequest:
    """The lookup of a /related request (and its page); raises BadRequest."""
    return RelatedRequest.parse(params.get("paper"), params.get("k"), params.get("group"), params.get("reviewer"),
                                params.get("topic"), params.get("week"))


def parse_passage(params: dict[str, str]) -> tuple[str, int]:
    """(file, line) of a /passage request; raises BadRequest."""
    file = (params.get("file") or "").strip()
    if not file:
        raise BadRequest("file is empty; give the file (or path) and line a hit shows")
    line = (params.get("line") or "").strip() or "1"
    if not (line.isascii() and line.isdigit() and len(line) <= 12 and 1 <= int(line) <= MAX_LINE):
        raise BadRequest(f"line takes a whole number from 1 to {MAX_LINE}, not {params.get('line')!r}")
    return file, int(line)


Handler = Callable[[Request], Awaitable[Response]]


def answer(endpoint: Handler, page: Callable[[Request, int, str], Response] | None = None) -> Handler:
    """Wrap an endpoint: library errors become their status with the message, anything else a logged 500.

    `page` renders errors for browsers (the HTML routes); everything else gets JSON.
    """

    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ReviewSearchError as e:
            status, message = e.status, str(e)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.url.path)
            status, message = 500, "internal error; the server log has the details"
        if page is not None and wants_html(request):
            return page(request, status, message)
        return _json(status, {"error": message})

    return run

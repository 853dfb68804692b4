"""The search page: server-rendered HTML over the same SearchService as the JSON API.

Templates are Jinja2 with autoescape on, so every string from the notes
(titles, names, paths, passages) is escaped, and every shown string has its
control and bidi characters made visible (`safe_text.clean`, as in the terminal:
a U+202E in a file name must not reverse what follows). Values that go back to
the server (form fields) go through `| field` instead, which keeps them as they
are but writes those characters as character references. Query terms
are highlighted by `highlight`, which cleans and escapes the text around each
mark itself. CSS and the few
lines of JS are served from `static/`: no build step, nothing from a CDN.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..safe_text import clean, respell_unsafe
from ..errors import ReviewSearchError
from ..rank.request import RelatedRequest
from .params import SEARCH_PARAMS, answer, parse_search, query_params
from ..service import SearchService
from ..storage import review_dict

HERE = Path(__file__).parent
PAGE_K = "10"  # results on the page unless the URL says otherwise


def highlight(text: str, terms: Iterable[str]) -> Markup:
    """`text` escaped, with case-insensitive occurrences of the terms wrapped in <mark>."""
    text = clean(text)
    words = sorted({t for t in terms if t and t.strip()}, key=len, reverse=True)
    if not words:
        return escape(text)
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    out, last = [], 0
    for m in pattern.finditer(text):
        out += [escape(text[last:m.start()]), Markup("<mark>"), escape(m.group()), Markup("</mark>")]
        last = m.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


def _shown(value: Any) -> Any:
    """Every `{{ }}` output: strings cleaned for display; Markup (already safe, or a form value) as is."""
    return clean(value) if isinstance(value, str) and not isinstance(value, Markup) else value


def form_value(value: Any) -> Markup:
    """`value` for an HTML attribute that is sent back (a form field): exactly the text, with control and
    bidi characters as character references, so the page source carries none raw."""
    return Markup(respell_unsafe(str(escape(str(value))), lambda ch: f"&#x{ord(ch):x};"))


def week_label(week: int | None) -> str:
    # Shown under a 주차 label or in its column, so an unknown week is just "?".
    return "?" if week is None else f"{week}주차"


def _url(path: str, **params: Any) -> str:
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(clean) if clean else "")


templates = Jinja2Templates(
    env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, finalize=_shown)
)
templates.env.filters.update(highlight=highlight, week=week_label, field=form_value)
templates.env.globals.update(url=_url)


class Pages:
    """The HTML routes: search at /, and the HTML faces of /papers, /related and /passage."""

    def __init__(self, service: SearchService):
        self.service = service

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", answer(self.search, self.error)),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    def _render(self, request: Request, name: str, code: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=code)

    async def _facets(self) -> dict[str, list]:
        """Choices for the filters, from what the index holds."""
        papers = await run_in_threadpool(self.service.papers)
        return {
            "reviewers": sorted({r for p in papers for r in p.reviewers if r}),
            "papers": sorted({p.topic for p in papers}),
            "weeks": sorted({p.week for p in papers if p.week is not None}),
        }

    async def search(self, request: Request) -> Response:
        params = query_params(request, SEARCH_PARAMS)
        form = {name: params.get(name, "") for name in SEARCH_PARAMS}
        context: dict[str, Any] = {"form": form, "result": None, "error": None, **await self._facets()}
        status = 200
        if form["q"].strip():
            try:
                context["result"] = await run_in_threadpool(
                    self.service.search, parse_search({**params, "k": params.get("k") or PAGE_K})
                )
            except ReviewSearchError as e:  # shown above the form, which keeps what was typed
                status, context["error"] = e.status, str(e)
        return self._render(request, "search.html", status, **context)

    async def papers(self, request: Request) -> Response:
        contents = await run_in_threadpool(self.service.contents)
        return self._render(request, "papers.html", papers=contents["papers"], status=contents)

    async def related(self, request: Request, q: RelatedRequest) -> Response:
        title, entries = await run_in_threadpool(self.service.related, q.paper, q.k, q.group, q.filters)
        return self._render(request, "related.html", title=title, entries=entries, group=q.group.value, k=q.k)

    async def review(self, request: Request, file: str, line: int) -> Response:
        passages = await run_in_threadpool(self.service.review, file, line)
        return self._render(request, "review.html", review=review_dict(passages), line=line)

    def error(self, request: Request, status: int, message: str) -> Response:
        return self._render(request, "error.html", status, status_code=status, message=message)

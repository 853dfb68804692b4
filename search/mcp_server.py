"""`review-search mcp`: the index as tools for AI assistants, over the Model Context Protocol.

Five tools, declared with the official SDK (`mcp` 2.x, `MCPServer`): their
docstrings and typed parameters are what an assistant reads as descriptions and
JSON schemas, and their pydantic results are published as output schemas.

    search(query, k, mode, reviewer, paper, weeks, section)   the passages closest to a query
    related(paper, k)                                 reviews most similar to a reviewed paper's
    get_review(file, line)                            the whole review behind a citation
    list_papers()                                     every reviewed paper, its presenter and reviewers
    index_status()                                    what the index holds and was built with

Every result carries `cite` (`path:line`) plus paper, reviewer, presenter and
week, so an assistant can quote its source. Library errors (bad arguments, an
unknown paper, no index) reach the assistant as tool errors with the library's
one-line message; anything else is reported by the SDK as a failed call, with
the traceback in the server's log only.

The same tools are served over stdio (`run_stdio`, for assistants that launch
the command) and over streamable HTTP (`mcp_asgi`, for the Starlette server to
mount at `/mcp`). Both sit on one `SearchService`, which keeps the index and
model loaded and picks up rebuilt indexes on the next call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, AsyncContextManager, Callable, Optional

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field
from starlette.types import ASGIApp

from .errors import ReviewSearchError
from .ranking import Hit
from .request import DEFAULT_K, DEFAULT_MODE, MAX_K, Mode, SearchRequest
from .service import SearchService
from .store import StoredPassage, review_dict

INSTRUCTIONS = (
    "Semantic search over a study group's weekly paper-review notes (mostly Korean, with English terms). "
    "Queries may be Korean or English. Cite results by their `cite` field (path:line); "
    "use get_review with a result's path and line to read the whole review."
)


class Citation(BaseModel):
    """Where a passage or review is, and whose it is."""

    cite: str = Field(description="path:line of the passage, for citing it")
    path: str = Field(description="the notes file, as indexed")
    file: str = Field(description="the file name alone")
    line: int = Field(description="first line of the passage (1-based)")
    end_line: int = Field(description="last line of the passage")
    week: Optional[int] = Field(description="study week, when the notes say")
    paper: str = Field(description="title of the reviewed paper")
    presenter: str = Field(description="who presented the paper")
    reviewer: str = Field(description="who wrote the review (empty when unnamed)")


class SearchHit(Citation):
    """One result: a passage of a review, with its scores."""

    text: str = Field(description="the passage")
    section: str = Field(description="the kind of passage: summary, method, results, opinion, limitations or other")
    score: float = Field(description="how close the review is to the query: MaxSim (late mode; ~0.80 unrelated, "
                                     "0.90+ close), cosine (dense, hybrid) or BM25 (lexical)")
    similarity: Optional[float] = Field(description="cosine similarity of query and passage vectors, when computed")


class SearchResults(BaseModel):
    query: str = Field(description="the query as searched (cut when it was very long)")
    hits: list[SearchHit] = Field(description="best first; each review at most once")


class RelatedResults(BaseModel):
    paper: str = Field(description="the reviewed paper the given name was matched to")
    related: list[SearchHit] = Field(
        description="other papers' reviews, most similar first; score is their similarity to this paper's reviews"
    )


class ReviewPassage(BaseModel):
    line: int
    end_line: int
    text: str


class Review(Citation):
    """A whole review: its metadata, then its text passage by passage."""

    review_no: int = Field(description="the review's number under its paper")
    text: str = Field(description="the whole review, passages separated by blank lines")
    passages: list[ReviewPassage] = Field(description="the same text with each passage's lines, for citing parts")


class PaperInfo(BaseModel):
    paper: str
    week: Optional[int]
    file: str
    presenter: str
    reviewers: list[str]
    passages: int = Field(description="indexed passages of its reviews")


class Papers(BaseModel):
    papers: list[PaperInfo]


class IndexStatus(BaseModel):
    index: str = Field(description="the live generation of the index")
    files: int
    reviews: int
    passages: int
    model: str = Field(description="the embedding model the index was built with")
    created: str = Field(description="when the live generation was built (UTC)")
    roots: list[str] = Field(description="the note folders and files it was built from")


def _citation(p: StoredPassage) -> dict:
    return dict(
        cite=f"{p.path}:{p.line}", path=p.path, file=p.file, line=p.line, end_line=p.end_line,
        week=p.week, paper=p.topic, presenter=p.presenter, reviewer=p.reviewer,
    )


def _hit(h: Hit) -> SearchHit:
    return SearchHit(**_citation(h.passage), text=h.passage.text, section=h.passage.section, score=round(float(h.score), 6),
                     similarity=None if h.dense is None else round(float(h.dense), 6))


def build_server(service: SearchService) -> MCPServer:
    """An MCP server whose five tools answer from `service`; run it over stdio or mount it over HTTP."""
    server = MCPServer("review-search", instructions=INSTRUCTIONS, log_level="WARNING")

    def answer(fn: Callable[[], object]):
        # The library's expected failures are the assistant's to read and act on;
        # ToolError passes the message through where any other exception is hidden.
        try:
            return fn()
        except ReviewSearchError as e:
            raise ToolError(str(e)) from None

    @server.tool()
    def search(
        query: Annotated[str, Field(description="what to look for, in Korean or English")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="how many reviews to return")] = DEFAULT_K,
        mode: Annotated[Mode, Field(description="late: token-level meaning fused with words (best); hybrid: "
                                                "whole-passage meaning and words fused; dense: meaning only; "
                                                "lexical: words only")] = DEFAULT_MODE,
        reviewer: Annotated[Optional[str], Field(description="only this reviewer's reviews (exact name)")] = None,
        paper: Annotated[Optional[str], Field(description="only papers whose title contains this")] = None,
        weeks: Annotated[Optional[str], Field(description="only these weeks: one (3) or a range (3-5)")] = None,
        section: Annotated[Optional[str], Field(description="only passages of this kind: summary, method, results, "
                                                           "opinion, limitations, other (or a label such as 한계)")] = None,
    ) -> SearchResults:
        """Find the review passages closest in meaning to a query; each review appears once, with its best passage."""
        def run() -> SearchResults:
            request = SearchRequest.parse(query, k, mode, None, reviewer, paper, weeks, section=section)
            result = service.search(request)
            return SearchResults(query=request.query, hits=[_hit(h) for h in result.hits])

        return answer(run)

    @server.tool()
    def related(
        paper: Annotated[str, Field(description="a reviewed paper: its title, part of it, an acronym or a near spelling")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="how many reviews to return")] = DEFAULT_K,
    ) -> RelatedResults:
        """Reviews of other papers most similar to what was written about this paper (its own reviews excluded)."""
        def run() -> RelatedResults:
            title, entries = service.related(paper, k)
            return RelatedResults(paper=title, related=[_hit(e.hit) for e in entries])

        return answer(run)

    @server.tool()
    def get_review(
        file: Annotated[str, Field(description="the notes file of a result: its path or file name")],
        line: Annotated[int, Field(ge=1, description="any line inside the review, e.g. a result's line")],
    ) -> Review:
        """The whole review that contains a cited line, with its paper, presenter, reviewer and week."""
        def run() -> Review:
            review = review_dict(service.review(file, line))
            return Review(**review, cite=f"{review['path']}:{review['line']}", paper=review["topic"])

        return answer(run)

    @server.tool()
    def list_papers() -> Papers:
        """Every reviewed paper in the index, by week: its presenter, its reviewers and how much was written."""
        return answer(lambda: Papers(papers=[
            PaperInfo(paper=p.topic, week=p.week, file=p.file, presenter=p.presenter,
                      reviewers=p.reviewers, passages=p.passages)
            for p in service.papers()
        ]))

    @server.tool()
    def index_status() -> IndexStatus:
        """What the index holds (files, reviews, passages), which model built it, and when."""
        def run() -> IndexStatus:
            s = service.status()
            return IndexStatus(index=s["index"], files=s["files"], reviews=s["reviews"], passages=s["passages"],
                               model=s["model"], created=s["created"], roots=s["roots"])

        return answer(run)

    return server


def run_stdio(service: SearchService) -> None:
    """Serve the tools over stdin/stdout until the client closes the connection."""
    build_server(service).run("stdio")


@dataclass(frozen=True)
class McpAsgi:
    """The MCP endpoint for a Starlette app, and what must run while the app does.

        mcp = mcp_asgi(service)
        @asynccontextmanager
        async def lifespan(app):
            async with mcp.lifespan():
                yield
        Starlette(routes=[..., Route("/mcp", endpoint=mcp.app)], lifespan=lifespan)

    `app` answers every method on its route (POST messages, GET streams, DELETE sessions).
    """

    app: ASGIApp
    lifespan: Callable[[], AsyncContextManager[None]]


def mcp_asgi(service: SearchService, host: str = "127.0.0.1") -> McpAsgi:
    """The tools over streamable HTTP, to mount at one route of an ASGI server.

    `host` is where the server listens: on a loopback address the SDK refuses
    requests whose Host or Origin is not loopback (DNS-rebinding protection).
    The lifespan can be entered once only: build a new McpAsgi for a new app.
    """
    server = build_server(service)
    # Called for its side effect: it creates the session manager with the SDK's
    # transport-security defaults for `host`; its own Starlette app is not used.
    server.streamable_http_app(host=host)
    manager = server.session_manager
    return McpAsgi(app=manager.asgi_app, lifespan=manager.run)

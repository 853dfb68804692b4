"""`review-search mcp`: the index as tools for AI assistants, over the Model Context Protocol.

Seven tools, declared with the official SDK (`mcp` 2.x, `MCPServer`): their
docstrings and typed parameters are what an assistant reads as descriptions and
JSON schemas, and their pydantic results are published as output schemas.

    search(query, k, mode, reviewer, paper, weeks, section)   the passages closest to a query
    related(paper, k, reviewer, in_paper, weeks)      reviews most similar to a reviewed paper's
    seen(paper)                                       has the group reviewed a paper, and where
    who(query, k, reviewer, paper, weeks, section)    who knows about a subject, with the evidence
    get_review(file, line)                            the whole review behind a citation
    list_papers()                                     every reviewed paper, its presenter and reviewers
    index_status()                                    what the index holds and was built with

Every result carries `cite` (`path:line`) plus paper, reviewer, presenter and
week, so an assistant can quote its source. Arguments are validated by the
library, as for the CLI and the HTTP API, so a bad one (k=0, an unknown mode or
reviewer) is a tool error of one line; library errors (an unknown paper, no
index) likewise; anything else is reported by the SDK as a failed call, with the
traceback in the server's log only. A result's data is its structured content;
its text block is a short readable digest (one line per result), not a second
copy of the data.

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
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, Field
from starlette.types import ASGIApp

from .display import week_label
from .errors import ReviewSearchError
from .rank.people import TOP_ITEMS
from .rank.searcher import Hit
from .rank.request import DEFAULT_K, DEFAULT_MODE, MAX_K, Mode, RelatedRequest, SearchRequest
from .service import SearchService
from .storage import StoredPassage, review_dict

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
    score: float = Field(description="how close the review is to the query, never higher than the result above: "
                                     "MaxSim (late mode; ~0.80 unrelated, 0.90+ close), cosine (dense, hybrid), "
                                     "BM25 (lexical), or for related the similarity of the reviews")


class SearchResults(BaseModel):
    query: str = Field(description="the query as searched (cut when it was very long)")
    hits: list[SearchHit] = Field(description="best first; each review at most once")


class RelatedResults(BaseModel):
    paper: str = Field(description="the reviewed paper the given name was matched to")
    related: list[SearchHit] = Field(
        description="other papers' reviews, most similar first; score is their similarity to this paper's reviews"
    )


class TopicInfo(BaseModel):
    """A reviewed paper as `seen` reports it."""

    paper: str
    week: Optional[int]
    cite: str = Field(description="path:line of the paper's first review")
    presenter: str
    reviewers: list[str]


class SeenMatch(TopicInfo):
    match: str = Field(description="how the name was recognised: title, short name, prefix, fuzzy, similar, arxiv, doi")


class SeenMention(BaseModel):
    paper: str = Field(description="the paper whose review cites the identifier")
    reviewer: str
    week: Optional[int]
    cite: str


class SeenResults(BaseModel):
    reviewed: bool = Field(description="whether a reviewed paper matches")
    matches: list[SeenMatch] = Field(description="the reviewed papers the name matches")
    mentioned_in: list[SeenMention] = Field(description="reviews citing the arXiv id or DOI, when no paper is it")
    closest: list[TopicInfo] = Field(description="the nearest reviewed titles, when nothing matches")


class WhoEvidence(SearchHit):
    role: str = Field(description="reviewed: the person wrote this review; presented: they presented its paper")
    rank: int = Field(description="the review's rank for the query")


class WhoPerson(BaseModel):
    name: str
    score: float = Field(description="sum of rank gains of their best evidence (1 for rank 1, 0.5 for rank 3)")
    evidence: list[WhoEvidence]


class WhoResults(BaseModel):
    query: str
    people: list[WhoPerson] = Field(description="best first")


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


# Parameters several tools share. Their bounds are stated, not enforced by the schema:
# the library checks them, so a bad value is one line, as from the CLI.
K = Annotated[int, Field(description=f"how many reviews to return, 1 to {MAX_K}")]
Reviewer = Annotated[Optional[str], Field(description="only this reviewer's reviews (exact name)")]
Weeks = Annotated[Optional[str], Field(description="only these weeks: one (3) or a range (3-5)")]
Section = Annotated[Optional[str], Field(description="only passages of this kind: summary, method, results, "
                                                    "opinion, limitations, other (or a label such as 한계)")]


def _citation(p: StoredPassage) -> dict:
    return dict(
        cite=f"{p.path}:{p.line}", path=p.path, file=p.file, line=p.line, end_line=p.end_line,
        week=p.week, paper=p.topic, presenter=p.presenter, reviewer=p.reviewer,
    )


def _hit_fields(h: Hit) -> dict:
    return dict(**_citation(h.passage), text=h.passage.text, section=h.passage.section, score=round(float(h.score), 6))


def _topic(t) -> dict:
    return dict(paper=t.title, week=t.week, cite=f"{t.path}:{t.line}", presenter=t.presenter, reviewers=list(t.reviewers))


def _digest_line(i: int, hit: dict) -> str:
    return f"{i}. {hit['score']:.3f} {hit['paper']} · {hit['reviewer'] or '(no reviewer)'} · {hit['cite']}"


def _result(model: BaseModel, lines: list[str]) -> CallToolResult:
    """Structured content for programs, a few readable lines for the assistant's eyes."""
    return CallToolResult(content=[TextContent(type="text", text="\n".join(lines) or "nothing found")],
                          structured_content=model.model_dump(mode="json"))


def _hits_result(model: BaseModel, head: str, hits: list[SearchHit]) -> CallToolResult:
    return _result(model, [head, *(_digest_line(i, h.model_dump()) for i, h in enumerate(hits, 1))])


def _modes() -> list[str]:
    return [m.value for m in Mode]


def build_server(service: SearchService) -> MCPServer:
    """An MCP server whose seven tools answer from `service`; run it over stdio or mount it over HTTP."""
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
        k: K = DEFAULT_K,
        mode: Annotated[str, Field(description="late: token-level meaning fused with words (best); hybrid: "
                                               "whole-passage meaning and words fused; dense: meaning only; "
                                               "lexical: words only", json_schema_extra={"enum": _modes()})
                        ] = DEFAULT_MODE.value,
        reviewer: Reviewer = None,
        paper: Annotated[Optional[str], Field(description="only papers whose title contains this")] = None,
        weeks: Weeks = None,
        section: Section = None,
    ) -> Annotated[CallToolResult, SearchResults]:
        """Find the review passages closest in meaning to a query; each review appears once, with its best passage."""
        def run() -> CallToolResult:
            request = SearchRequest.parse(query, k, mode, None, reviewer, paper, weeks, section=section)
            hits = [SearchHit(**_hit_fields(h)) for h in service.search(request).hits]
            return _hits_result(SearchResults(query=request.query, hits=hits), f"results for {request.query!r}:", hits)

        return answer(run)

    @server.tool()
    def related(
        paper: Annotated[str, Field(description="a reviewed paper: its title, part of it, an acronym or a near spelling")],
        k: K = DEFAULT_K,
        reviewer: Reviewer = None,
        in_paper: Annotated[Optional[str], Field(description="only reviews of papers whose title contains this")] = None,
        weeks: Weeks = None,
    ) -> Annotated[CallToolResult, RelatedResults]:
        """Reviews of other papers most similar to what was written about this paper (its own reviews excluded)."""
        def run() -> CallToolResult:
            request = RelatedRequest.parse(paper, k, None, reviewer, in_paper, weeks)
            title, entries = service.related(request.paper, request.k, request.group, request.filters)
            hits = [SearchHit(**_hit_fields(e.hit)) for e in entries]
            return _hits_result(RelatedResults(paper=title, related=hits), f"reviews related to {title!r}:", hits)

        return answer(run)

    @server.tool()
    def seen(
        paper: Annotated[str, Field(description="a paper title (any case, partial, near spelling), an arXiv id or URL, or a DOI")],
    ) -> Annotated[CallToolResult, SeenResults]:
        """Has the group reviewed this paper? The week, presenter, reviewers and citation, or the closest titles."""
        def run() -> CallToolResult:
            r = service.seen(paper)
            result = SeenResults(
                reviewed=r.reviewed,
                matches=[SeenMatch(**_topic(m.topic), match=m.how) for m in r.matches],
                mentioned_in=[SeenMention(paper=m.topic.title, reviewer=m.reviewer, week=m.topic.week,
                                          cite=f"{m.path}:{m.line}") for m in r.mentions],
                closest=[TopicInfo(**_topic(t)) for t, _ in r.closest],
            )
            if r.reviewed:
                lines = [f"reviewed: {m.paper} · {week_label(m.week)} · presenter {m.presenter} · {m.cite}" for m in result.matches]
            else:
                lines = ["not reviewed", *(f"mentioned in: {m.paper} · {m.cite}" for m in result.mentioned_in),
                         *(f"closest: {t.paper} · {t.cite}" for t in result.closest)]
            return _result(result, lines)

        return answer(run)

    @server.tool()
    def who(
        query: Annotated[str, Field(description="the subject, in Korean or English")],
        k: Annotated[int, Field(description=f"how many people, 1 to {MAX_K}")] = DEFAULT_K,
        reviewer: Reviewer = None,
        paper: Annotated[Optional[str], Field(description="only evidence from papers whose title contains this")] = None,
        weeks: Weeks = None,
        section: Section = None,
    ) -> Annotated[CallToolResult, WhoResults]:
        """Who in the group knows about a subject: members ranked by the reviews they wrote and the papers they presented."""
        def run() -> CallToolResult:
            request = SearchRequest.parse(query, k, None, None, reviewer, paper, weeks, section=section)
            people = service.who(request.query, k=request.k, filters=request.filters)
            result = WhoResults(query=request.query, people=[
                WhoPerson(name=p.name, score=round(p.score, 4), evidence=[
                    WhoEvidence(**_hit_fields(e.hit), role="presented" if e.presented else "reviewed", rank=e.rank)
                    for e in p.evidence])
                for p in people])
            lines = [f"{i}. {p.name} {p.score:.2f}: " + "; ".join(f"{e.role} {e.paper} ({e.cite})" for e in p.evidence[:TOP_ITEMS])
                     for i, p in enumerate(result.people, 1)]
            return _result(result, lines)

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

"""The `review-search` command line: parses flags, calls the library, prints.

Library errors become one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict
from enum import Enum
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional

import typer

from .errors import BadRequest, ReviewSearchError
from .rank.request import DEFAULT_GROUP, DEFAULT_K, DEFAULT_MODE, DEPTH, MAX_K, Group, Mode, RelatedGroup

if TYPE_CHECKING:
    from .indexing.build import BuildSummary
    from .model.protocol import Encoder
    from .service import SearchService
    from .indexing.watch import Watcher

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Semantic search over weekly paper-review notes.")

DEFAULT_INDEX = "index"
# eval --mode: any ranking mode, or `all` of them side by side (derived from Mode, so it never lags behind)
EvalMode = Enum("EvalMode", {"ALL": "all", **{m.name: m.value for m in Mode}}, type=str)
IndexOpt = typer.Option(DEFAULT_INDEX, "--index", help="Index folder, qdrant:DIR (Qdrant embedded) or "
                        "http(s)://HOST:PORT/COLLECTION (a Qdrant server).")
KOpt = typer.Option(DEFAULT_K, "-k", min=1, max=MAX_K, help="How many results.")
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")
ReviewerOpt = typer.Option(None, "--reviewer", help="Only this reviewer's notes.")
TopicOpt = typer.Option(None, "--topic", help="Only papers whose title contains this.")
WeekOpt = typer.Option(None, "--week", help="A week (3) or range (3-5).")
WatchOpt = typer.Option(False, "--watch", help="Also update the index whenever .md files under its folders are added, changed or deleted.")
SectionOpt = typer.Option(
    None, "--section",
    help="Only passages of this kind: summary, method, results, opinion, limitations, other (or a label: 후기, 한계).",
)


def fail(message: str, code: int = 1) -> None:
    from .safe_text import clean

    typer.echo(f"error: {clean(message, single_line=True)}", err=True)
    raise typer.Exit(code)


def _advice(e: ReviewSearchError, index_dir: str | None) -> str:
    """The command that fixes `e`, in this CLI's terms."""
    where = f" --index {shlex.quote(index_dir)}" if index_dir is not None else ""
    if e.hint == "build":
        return f"; build one with `review-search index PATH ...{where}`"
    if e.hint == "rebuild":
        paths = " ".join(map(shlex.quote, e.roots)) if e.roots else "PATH ..."
        return f"; rebuild with `review-search index {paths} --full{where}`"
    if e.hint == "wait":
        return "; wait for it to finish and try again"
    if e.hint == "list":
        return f"; `review-search list{where}` shows the papers"
    return ""


@contextmanager
def clean_errors(index_dir: str | None = None) -> Iterator[None]:
    """Turn the library's expected failures into one-line messages: bad input exits 2, the rest 1."""
    try:
        yield
    except BadRequest as e:
        fail(str(e) + _advice(e, index_dir), 2)
    except ReviewSearchError as e:
        fail(str(e) + _advice(e, index_dir), 1)
    except KeyboardInterrupt:
        fail("interrupted; the index is unchanged", 130)
    except Exception as e:  # a bug: still one line, but say so
        fail(f"internal error ({type(e).__name__}: {e}); please report it", 1)


def emit_json(payload) -> None:
    """Every command's --json output: UTF-8 text as is, one style; on a terminal, characters that
    would act on it are written as JSON escapes (the same JSON, only spelled safely)."""
    from .safe_text import json_text

    typer.echo(json_text(payload, terminal=sys.stdout.isatty()))


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


@app.command()
def index(
    paths: Optional[List[Path]] = typer.Argument(None, help="Review files or folders to add to what the index covers (default: what it was built from, else seeds/)."),
    index_dir: str = IndexOpt,
    model: Optional[str] = typer.Option(None, "--model", help="sentence-transformers model (folder or Hub id); default: the index's model, else multilingual-e5-small offline."),
    full: bool = typer.Option(False, "--full", help="Re-embed everything instead of reusing stored vectors."),
    replace: bool = typer.Option(False, "--replace", help="Cover only PATHS: forget the other folders the index was built from, and their passages."),
    allow_remove: bool = typer.Option(False, "--allow-remove", help="Build even when folders the index covers hold no notes now, removing their passages."),
    watch: bool = typer.Option(False, "--watch", help="Keep running: update the index whenever .md files under the paths are added, changed or deleted (Ctrl-C stops)."),
    as_json: bool = JsonOpt,
) -> None:
    """Build or update the index from review files."""
    from .indexing.build import build_index, build_roots
    from .model.encoders import load_encoder
    from .backends import read_settings

    with clean_errors(index_dir):
        encoder = load_encoder(model or read_settings(index_dir).model_id)
    if watch:
        for flag, on in (("--full", full), ("--replace", replace)):
            if on:
                fail(f"{flag} and --watch do not go together: run `index {flag}` once, then `index --watch`", 2)
        with clean_errors(index_dir):
            roots = build_roots(paths, index_dir)
        _watch_index(index_dir, roots, encoder, as_json)
        return
    with clean_errors(index_dir):
        err = _console(stderr=True)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), _rate_column(), TimeRemainingColumn(),
            console=err, transient=True, disable=as_json or not err.is_terminal,
        ) as bar:
            task = bar.add_task("embed", total=0)
            summary = build_index(
                paths, index_dir, encoder, full=full, replace_roots=replace, allow_remove=allow_remove,
                on_start=lambda n: bar.update(task, total=n),
                progress=lambda k: bar.advance(task, k),
            )
    _report_build(summary, index_dir, as_json)


def _rate_column():
    """A progress column with rich's estimate of the recent rate, empty until the first batches are done."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} passages/s" if task.speed else "")

    return Rate()


def _report_build(summary: "BuildSummary", index_dir: str, as_json: bool = False, err: bool = False) -> None:
    """A build's warnings on stderr, then its summary (on stderr with `err`, where stdout belongs to a protocol)."""
    from .safe_text import clean

    for problem in summary.problems:
        typer.echo(f"warning: {clean(str(problem), single_line=True)}", err=True)
    for folder in summary.dropped:
        typer.echo(f"no longer covered: {clean(folder, single_line=True)}", err=True)
    if as_json:
        emit_json(summary.as_dict())
    else:
        typer.echo(
            f"indexed {summary.files} files, {summary.reviews} reviews, {summary.passages} passages "
            f"({summary.embedded} embedded, {summary.reused} reused, {summary.removed} removed"
            + (f", {summary.kept} kept from unreadable files" if summary.kept else "") + ") "
            f"in {summary.seconds:.1f}s → {index_dir}" + ("" if summary.written else " (unchanged: nothing written)"),
            err=err,
        )


def _watch_failed(e: Exception) -> None:
    from .safe_text import clean

    typer.echo(f"warning: index update failed, still watching: {clean(str(e), single_line=True)}", err=True)


def _watch_in_background(index_dir: str, service: "SearchService") -> "Watcher":
    """For `serve --watch` and `mcp --watch`: update the index from the folders it was built from.

    The builds use the service's own model object, so the server holds one model, not two.
    """
    from .indexing.watch import watch_in_thread

    return watch_in_thread(index_dir, encoder=service.encoder, on_build=lambda s: _report_build(s, index_dir, err=True),
                           on_error=_watch_failed)


def _watch_index(index_dir: str, roots: list[str], encoder: "Encoder", as_json: bool) -> None:
    """`index --watch`: one summary per build until Ctrl-C."""
    from .indexing.watch import watch_index

    typer.echo(f"watching {', '.join(roots)} for changes to .md files (Ctrl-C stops)", err=True)
    with clean_errors(index_dir):
        try:
            watch_index(index_dir, roots, encoder, on_build=lambda s: _report_build(s, index_dir, as_json),
                        on_error=_watch_failed)
        except KeyboardInterrupt:
            typer.echo("stopped watching", err=True)


@app.command()
def query(
    text: str = typer.Argument(..., help="What to look for, in Korean or English."),
    index_dir: str = IndexOpt,
    k: int = KOpt,
    mode: Mode = typer.Option(DEFAULT_MODE, "--mode", help="How to rank."),
    group: Group = typer.Option(DEFAULT_GROUP, "--group", help="review: each review once; passage: raw passages."),
    reviewer: Optional[str] = ReviewerOpt,
    topic: Optional[str] = TopicOpt,
    week: Optional[str] = WeekOpt,
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop hits whose shown score is below this."),
    section: Optional[str] = SectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Find the review passages closest to TEXT."""
    from .rank.searcher import Searcher
    from .rank.request import SearchRequest
    from .backends import open_backend

    with clean_errors(index_dir):
        request = SearchRequest.parse(text, k, mode, group, reviewer, topic, week, min_score, section=section)
        with open_backend(index_dir) as idx:
            result = Searcher(idx).search(request)
    if as_json:
        emit_json([h.as_dict() for h in result.hits])
        return
    if request.truncated:
        typer.echo(f"note: the query was cut to its first {len(request.query)} characters", err=True)
    if not result.hits:
        typer.echo("no review matches" + (f" with score >= {min_score}" if min_score is not None else ""))
        return
    from .display import render_hits

    render_hits(_console(), result.hits, result.terms)


@app.command()
def related(
    paper: str = typer.Argument(..., metavar="PAPER", help="A reviewed paper: its title, part of it, an acronym (DPR) or a near spelling."),
    index_dir: str = IndexOpt,
    k: int = KOpt,
    group: RelatedGroup = typer.Option(RelatedGroup.REVIEW, "--group", help="review: one entry per review; paper: reviews rolled up."),
    reviewer: Optional[str] = ReviewerOpt,
    topic_filter: Optional[str] = TopicOpt,
    week: Optional[str] = WeekOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Other reviews most similar to what was written about PAPER."""
    from .rank.related import related_reviews
    from .rank.request import RelatedRequest
    from .backends import open_backend

    with clean_errors(index_dir):
        request = RelatedRequest.parse(paper, k, group, reviewer, topic_filter, week)
        with open_backend(index_dir) as idx:
            title, entries = related_reviews(idx, request.paper, k=request.k, group=request.group, filters=request.filters)
    if as_json:
        emit_json({"paper": title, "related": [e.as_dict() for e in entries]})
        return
    from .display import render_hits
    from .safe_text import clean

    typer.echo(f"reviews related to: {clean(title, single_line=True)}\n")
    if not entries:
        typer.echo("no other reviews")
        return
    render_hits(_console(), [e.hit for e in entries], [], reviewers=[e.reviewers for e in entries])


@app.command()
def seen(
    paper: str = typer.Argument(..., help="A paper title (any case, partial, near spelling), an arXiv id or URL, or a DOI."),
    index_dir: str = IndexOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Has the group reviewed PAPER? Week, presenter, reviewers and file:line, or the closest titles."""
    from .rank.searcher import Searcher
    from .rank.seen import seen as look_up
    from .backends import open_backend

    with clean_errors(index_dir):
        with open_backend(index_dir) as idx:
            searcher = Searcher(idx)  # its model loads only if seen() asks for it
            result = look_up(idx, paper, lambda: searcher.encoder)
    if as_json:
        emit_json(result.as_dict())
        return
    from .display import seen_lines

    for line in seen_lines(result):
        typer.echo(line)


@app.command()
def who(
    text: str = typer.Argument(..., help="The subject, in Korean or English."),
    index_dir: str = IndexOpt,
    k: int = typer.Option(DEFAULT_K, "-k", min=1, max=MAX_K, help="How many people."),
    depth: int = typer.Option(DEPTH, "--depth", min=1, max=MAX_K, help="How many of the best matching reviews count as evidence."),
    mode: Mode = typer.Option(DEFAULT_MODE, "--mode", help="How to rank the reviews."),
    reviewer: Optional[str] = ReviewerOpt,
    topic: Optional[str] = TopicOpt,
    week: Optional[str] = WeekOpt,
    section: Optional[str] = SectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Who knows about TEXT: members ranked by their best matching reviews and the papers they presented."""
    from .rank.people import TOP_ITEMS
    from .rank.people import who as rank_people
    from .rank.searcher import Searcher
    from .rank.request import parse_filters
    from .backends import open_backend

    with clean_errors(index_dir):
        filters = parse_filters(reviewer, topic, week, section)
        with open_backend(index_dir) as idx:
            people = rank_people(Searcher(idx), text, k=k, mode=mode, filters=filters, depth=depth)
    if as_json:
        emit_json([p.as_dict() for p in people])
        return
    from .display import people_lines

    for line in people_lines(people, depth, shown=TOP_ITEMS) or ["nobody: no review matches"]:
        typer.echo(line)


@app.command("list")
def list_(index_dir: str = IndexOpt, as_json: bool = JsonOpt) -> None:
    """What the index holds: weeks, papers, presenters, reviewers and passage counts."""
    from .backends import open_backend
    from .storage import contents

    with clean_errors(index_dir):
        with open_backend(index_dir) as idx:
            if as_json:
                emit_json(contents(idx))
                return
            papers = idx.papers()
    m = idx.info
    from .display import render_papers

    render_papers(_console(), f"{index_dir}: {m.files} files, {len(papers)} papers, "
                  f"{m.reviews} reviews, {m.passages} passages ({m.model_id})", papers)


@app.command()
def check(index_dir: str = IndexOpt, as_json: bool = JsonOpt) -> None:
    """Verify the whole index: every file against its checksum and every number a query reads.

    Queries check what they read as they go; this reads everything, however
    large the index, and exits 1 naming the first damaged file.
    """
    from .backends import open_backend

    from .backends import location_text

    with clean_errors(index_dir):
        with open_backend(index_dir, verify=False) as idx:
            report, version = idx.check(), idx.info.version
    if as_json:
        emit_json({"ok": True, "generation": version, "files": report.files,
                   "bytes": report.bytes, "passages": report.passages})
        return
    files = f"{report.files} files ({report.bytes / 2**20:.1f} MB) and " if report.files else ""  # a server keeps no files here
    typer.echo(f"{location_text(index_dir)}: ok, {files}{report.passages} passages verified ({version})")


@app.command("eval")
def eval_(
    queries: Path = typer.Argument(..., help="Labelled queries (JSON lines in the labelled sets' format; docs/ranking.md)."),
    index_dir: str = IndexOpt,
    mode: EvalMode = typer.Option(EvalMode.ALL, "--mode", help="One mode to score, or all of them side by side."),
    as_json: bool = JsonOpt,
) -> None:
    """Score ranking on labelled queries: nDCG@10, MRR@10, Recall@5, Hit@1 by query kind."""
    from .rank.evaluate import evaluate, read_queries
    from .rank.searcher import Searcher
    from .backends import open_backend

    with clean_errors(index_dir):
        labelled = read_queries(queries)
        modes = list(Mode) if mode == EvalMode.ALL else [Mode(mode.value)]
        with open_backend(index_dir) as idx:
            searcher = Searcher(idx)
            reports = [evaluate(searcher, labelled, m) for m in modes]
    if as_json:
        emit_json({r.mode: {"summary": r.summary(), "queries": [asdict(q) for q in r.results]} for r in reports})
        return
    from rich.table import Table

    table = Table(title=f"{queries} on {index_dir}")
    for col in ("mode", "kind", "n", "nDCG@10", "MRR@10", "Recall@5", "Hit@1"):
        table.add_column(col, justify="left" if col in ("mode", "kind") else "right")
    for r in reports:
        for kind, row in r.summary().items():
            table.add_row(r.mode, kind, str(row["n"]), *(f"{row[m]:.3f}" if m in row else "-" for m in ("ndcg", "mrr", "recall5", "hit1")))
        table.add_section()
    _console().print(table)


@app.command()
def serve(
    index_dir: str = IndexOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback exposes the notes to the network."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    watch: bool = WatchOpt,
    token: Optional[str] = typer.Option(None, "--token", help="Access token to require (default: $REVIEW_SEARCH_TOKEN; generated when not on loopback)."),
) -> None:
    """Serve the search page at /, the JSON API (/search, /related, /papers, /passage, /health) and MCP at /mcp, keeping the index and model loaded."""
    from .http.server import is_loopback, log_to_stderr, make_server, resolve_token

    token, generated = resolve_token(host, token)
    with clean_errors(index_dir):
        server = make_server(index_dir, host, port, token=token)
    log_to_stderr()
    if not is_loopback(host):
        typer.echo(f"warning: listening on {host} makes the notes reachable from the network", err=True)
    watcher = _watch_in_background(index_dir, server.service) if watch else None
    address = f"http://{f'[{host}]' if ':' in host else host}:{server.server_address[1]}"
    typer.echo(f"serving {index_dir} on {address}")
    if generated:
        typer.echo(f"access token (shown once): {token}\nopen {address}/?token={token}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
    finally:
        if watcher is not None:
            watcher.stop()
        server.server_close()


@app.command("mcp")
def mcp_(index_dir: str = IndexOpt, watch: bool = WatchOpt) -> None:
    """Serve the index to AI assistants over MCP on stdin/stdout (tools: search, related, seen, who, get_review, list_papers, index_status)."""
    from .mcp import run_stdio
    from .service import SearchService

    with clean_errors(index_dir):
        service = SearchService(index_dir)
    # stdout carries the protocol from here on: everything for people goes to stderr.
    watcher = _watch_in_background(index_dir, service) if watch else None
    try:
        run_stdio(service)
    except KeyboardInterrupt:
        pass
    finally:
        if watcher is not None:
            watcher.stop()
        service.close()


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"review-search {version('review-search')}")
        raise typer.Exit()


@app.callback()
def _options(
    _version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Semantic search over weekly paper-review notes."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()

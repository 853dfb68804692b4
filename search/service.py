"""A long-lived search service: one loaded index and model, shared by the HTTP API, the page and MCP.

A one-shot `query` pays for loading the model and the index on every call; a
service pays once and then answers in milliseconds.

Threads: an Index's SQLite connection may only be used by the thread that
opened it, and the lexical index promises nothing either. All index work
therefore runs on one dedicated worker thread; calls from any thread are
queued to it, which costs little when each takes milliseconds. Embedding the
query is the exception: it takes the longest part of a query (about 20 ms,
more for a long one) and needs only the model, so `search` does it on the
calling thread first (`Searcher.embed`); it then holds up no other request's
index work. Encoders that say `concurrent_queries = True` embed from several
threads at once; others are wrapped once so that every embedding call, from a
request, `seen`, `who` or a `--watch` build, waits its turn.

Rebuilds: before each call the worker asks the store which generation is live
and reopens the index when it changed, so `review-search index` can add a week
while the service runs. If the new generation cannot be opened, the service
keeps answering from the one it has.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from .model import encoders as embedding
from .model.protocol import Encoder
from .errors import NotFound, ReviewSearchError
from .rank.searcher import Searcher, SearchResult
from .rank.people import Person, who
from .rank.related import Related, related_reviews
from .rank.request import DEFAULT_K, DEPTH, Filters, Mode, RelatedGroup, SearchRequest
from .rank.seen import SeenResult, seen
from .backends import live_version, open_backend
from .storage import Paper, StoredPassage, contents

T = TypeVar("T")


class SearchService:
    """The loaded index and model; every use runs on its single worker thread (see module doc)."""

    def __init__(self, index_dir: Path | str, encoder: Encoder | None = None):
        self.index_dir = index_dir
        self._given_encoder = None if encoder is None else _one_at_a_time(encoder)
        self._searcher: Searcher | None = None
        self._seen: str | None = None  # the generation last acted on
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
        live = live_version(self.index_dir)
        if self._searcher is not None and live in (None, self._seen):
            return self._searcher
        # Remember the generation before trying it, so one that fails to open
        # is tried once, not on every call.
        self._seen = live
        try:
            searcher = self._open()
        except ReviewSearchError as e:
            if self._searcher is None:
                raise
            print(f"warning: keeping {self._searcher.index.info.version}: {e}", file=sys.stderr)
            return self._searcher
        if self._searcher is not None:
            self._searcher.index.close()
        self._searcher = searcher
        self._seen = searcher.index.info.version
        return searcher

    def _open(self) -> Searcher:
        index = open_backend(self.index_dir)
        try:
            encoder = self._given_encoder
            old = self._searcher
            if encoder is None and old is not None and old.encoder.model_id == index.info.model_id:
                encoder = old.encoder
            if encoder is None:
                encoder = _one_at_a_time(embedding.load_encoder(index.info.model_id))
            searcher = Searcher(index, encoder)
            # Load the model (what a default request runs), the vectors and BM25 now, so no request pays for them.
            searcher.embed(SearchRequest.parse("warm up"))
            index.warm()
        except BaseException:
            index.close()
            raise
        return searcher

    @property
    def encoder(self) -> Encoder:
        """The model the live index was built with, as loaded for queries."""
        return self._run(lambda: self._current().encoder)

    def search(self, request: SearchRequest) -> SearchResult:
        """The results of `request` from the live generation of the index."""
        searcher = self._run(self._current)
        embedded = searcher.embed(request)  # on the calling thread: the index thread stays free meanwhile

        def run() -> SearchResult:
            current = self._current()
            return current.search(request, embedded if current.encoder is searcher.encoder else None)

        return self._run(run)

    def related(
        self, topic: str, k: int = DEFAULT_K, group: RelatedGroup = RelatedGroup.REVIEW, filters: Filters = Filters()
    ) -> tuple[str, list[Related]]:
        """The paper `topic` names and the reviews (or papers) most similar to it."""
        return self._run(lambda: related_reviews(self._current().index, topic, k=k, group=group, filters=filters))

    def seen(self, paper: str) -> SeenResult:
        """Whether the group reviewed `paper` (title, arXiv id/URL or DOI), and where (seen.py)."""
        return self._run(lambda: seen(self._current().index, paper, lambda: self._current().encoder))

    def who(
        self, query: str, k: int = 5, mode: Mode | str | None = None, filters: Filters = Filters(), depth: int = DEPTH
    ) -> list[Person]:
        """The people with the strongest evidence of knowing about `query` (people.py)."""
        return self._run(lambda: who(self._current(), query, k=k, mode=mode, filters=filters, depth=depth))

    def papers(self) -> list[Paper]:
        """Every reviewed paper in the index (what `list` shows)."""
        return self._run(lambda: self._current().index.papers())

    def contents(self) -> dict:
        """The index's totals, model and papers, as `list --json` shows them."""
        return self._run(lambda: contents(self._current().index))

    def review(self, file: str, line: int) -> list[StoredPassage]:
        """The whole review covering `line` of `file` (path or file name), passage by passage."""

        def find() -> list[StoredPassage]:
            passages = self._current().index.review_at(file, line)
            if not passages:
                raise NotFound(f"no indexed review covers {file}:{line}")
            return passages

        return self._run(find)

    def status(self) -> dict:
        """What the live index holds and was built with."""

        def read() -> dict:
            index = self._current().index
            m = index.info
            return {
                "status": "ok", "index": m.version, "passages": index.size, "reviews": m.reviews,
                "files": m.files, "model": m.model_id, "created": m.created, "roots": m.roots,
            }

        return self._run(read)

    def close(self) -> None:
        """Close the index and stop the worker thread; safe to call twice."""
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._searcher is not None:
                self._searcher.index.close()
                self._searcher = None

        self._run(shut)
        self._worker.shutdown()


def _one_at_a_time(encoder: Encoder) -> Encoder:
    """`encoder`, or for one that cannot embed two texts at once (no `concurrent_queries`), one that waits its turn."""
    return encoder if getattr(encoder, "concurrent_queries", False) else _Serialised(encoder)


class _Serialised:
    """An encoder whose embedding calls, from any thread (requests, `seen`, `who`, `--watch`), run one at a time."""

    def __init__(self, encoder: Encoder):
        self._encoder, self._lock = encoder, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._encoder, name)
        if not name.startswith("embed"):
            return attr  # model_id, dim and the rest, as the model has them

        def one_at_a_time(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return one_at_a_time

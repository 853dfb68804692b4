"""The Qdrant backend on a server or cluster, through qdrant-client: `--index http(s)://HOST:PORT/COLLECTION`
(the API key, if any, from the environment variable QDRANT_API_KEY), or `qdrant-memory:NAME` for
qdrant-client's in-memory local mode, which runs this same code with no server (tests, benchmarks).

A server's collection cannot be copied the way embedded.py copies a shard, so builds are versioned
inside it. Builds are numbered; every point carries the build that wrote it (`gen_from`) and the
one that removed it (`gen_to`, MAX_GEN while it is live), and every read is filtered to the points
of the live build. A build writes its new points and marks the ones it replaces or removes, then
makes its number live by rewriting one meta point: readers switch at that one write, and a build
that dies before it leaves them on the previous build (the next build clears what it left). Points
removed by one build are deleted by the next, once no reader can still be on the build they
belonged to.

COLLECTION is an alias. A full build (the first, `--full`, another model) writes a new collection
`COLLECTION-N` and switches the alias to it at the end; the collection before it is dropped by the
next build, for the same reason. Builds take a lock point in `COLLECTION-lock`, inserted only if
absent; a lock not renewed for LOCK_STALE seconds (its build died) is taken over.

What differs from embedded.py: points a build removed still count in the engine's BM25 IDF until
the next build deletes them; the paper-level BM25 is made from the passages when a reader opens.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from ..errors import BadRequest, IndexBusy, IndexDamaged, IndexUnavailable, NoIndex
from ..model.protocol import Encoder, Progress
from ..notes.reader import Problem
from ..storage import Settings, StoredPassage, Written
from . import MEMORY_PREFIX, server_location
from .index import (BM25, DENSE, KIND, PAPER, REVIEW, TOKENS, NewPoint, QdrantIndex, Sparse, Where, _uuid,
                    manifest_of, unchanged, write_changes)

BACKEND = "qdrant-server"
FORMAT_VERSION = 1
MAX_GEN = 2**53  # exact as the float Qdrant compares ranges in
LOGICAL = "lid"  # payload field: the point's id in index.py's terms (its physical id adds the build)
LOCK_STALE = 600.0
BEAT_EVERY = 30.0
META_ID, LOCK_ID = _uuid("meta"), _uuid("lock")
API_KEY_VARIABLE = "QDRANT_API_KEY"


def _models():
    try:
        from qdrant_client import models
    except ImportError:
        raise BadRequest("Qdrant server indexes need qdrant-client: pip install -e '.[qdrant]'") from None
    return models


class Unreachable(IndexUnavailable):
    """The Qdrant server cannot be reached or refused the request."""


_clients: dict[str, list] = {}  # target -> [client, users]; an in-memory store is its client, so it is kept
_clients_lock = threading.Lock()


def _connect(target: str):
    """A client for `target` (a URL, or `qdrant-memory:NAME`), shared within the process."""
    _models()
    from qdrant_client import QdrantClient

    with _clients_lock:
        if target in _clients:
            _clients[target][1] += 1
            return _clients[target][0]
        if target.startswith(MEMORY_PREFIX):
            client = QdrantClient(":memory:")
        else:
            # No version check: it warns from a thread of its own, over the first call's one-line error.
            client = QdrantClient(url=target, api_key=os.environ.get(API_KEY_VARIABLE) or None, timeout=30,
                                  check_compatibility=False)
        _clients[target] = [client, 1]
        return client


@atexit.register
def _close_all() -> None:
    """Close what is still open at exit, while the interpreter can (a client's own finaliser comes too late)."""
    with _clients_lock:
        for client, _ in _clients.values():
            client.close()
        _clients.clear()


def _release(target: str) -> None:
    with _clients_lock:
        entry = _clients.get(target)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0 and not target.startswith(MEMORY_PREFIX):
            del _clients[target]
            entry[0].close()


@contextmanager
def _calling(where: str) -> Iterator[None]:
    """Turn the client's failures (connection refused, 401, timeouts) into one-line Unreachable errors."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except UnexpectedResponse as e:
        key = f" (is {API_KEY_VARIABLE} set?)" if e.status_code in (401, 403) else ""
        raise Unreachable(f"Qdrant at {where} answered {e.status_code} {e.reason_phrase}{key}") from e
    except (ResponseHandlingException, ConnectionError, TimeoutError) as e:
        reason = e.source if isinstance(e, ResponseHandlingException) else e
        text = str(reason).splitlines()[0][:100] if str(reason) else "no answer"
        raise Unreachable(f"cannot reach Qdrant at {where} ({type(reason).__name__}: {text})") from e


class ServerView:
    """index.Engine on one collection as build `gen` sees it: the points live at that build."""

    def __init__(self, client, collection: str, gen: int):
        self.client, self.collection, self.gen = client, collection, gen

    def _filter(self, where: Where):
        m = _models()
        must = [m.FieldCondition(key=KIND, match=m.MatchValue(value=where.kind)),
                m.FieldCondition(key="gen_from", range=m.Range(lte=self.gen)),
                m.FieldCondition(key="gen_to", range=m.Range(gt=self.gen))]
        if where.ids is not None:
            must.append(m.FieldCondition(key=LOGICAL, match=m.MatchAny(any=sorted(where.ids))))
        if where.reviewer is not None:
            must.append(m.FieldCondition(key="reviewer", match=m.MatchValue(value=where.reviewer)))
        if where.topic_cf is not None:
            must.append(m.FieldCondition(key="topic_cf", match=m.MatchSubstring(substring=where.topic_cf)))
        if where.weeks is not None:
            must.append(m.FieldCondition(key="week", range=m.Range(gte=where.weeks[0], lte=where.weeks[1])))
        if where.section is not None:
            must.append(m.FieldCondition(key="section", match=m.MatchValue(value=where.section)))
        return m.Filter(must=must)

    def query(self, using: str, vector, limit: int, where: Where) -> list[tuple[str, float]]:
        m = _models()
        if isinstance(vector, Sparse):
            vector = m.SparseVector(indices=vector.indices, values=vector.values)
        found = self.client.query_points(self.collection, query=vector, using=using, limit=limit,
                                         query_filter=self._filter(where), with_payload=[LOGICAL]).points
        return [(p.payload[LOGICAL], float(p.score)) for p in found]

    def _records(self, where: Where, fields, vectors) -> Iterator:
        offset = None
        while True:
            page, offset = self.client.scroll(self.collection, scroll_filter=self._filter(where), limit=1000,
                                              offset=offset, with_payload=fields, with_vectors=vectors)
            yield from page
            if offset is None:
                return

    def scroll(self, where: Where, fields: list[str] | bool = True) -> Iterator[tuple[str, dict]]:
        selector = True if fields is True else [LOGICAL, *(fields or [])]
        for rec in self._records(where, selector, False):
            payload = dict(rec.payload)
            yield payload.pop(LOGICAL), {k: v for k, v in payload.items() if k not in ("gen_from", "gen_to")}

    def retrieve(self, ids: Sequence[str], using: str) -> dict[str, list]:
        """Vectors of passages (the only points index.py retrieves by id)."""
        return {rec.payload[LOGICAL]: rec.vector[using]
                for rec in self._records(Where("passage", frozenset(ids)), [LOGICAL], [using]) if using in (rec.vector or {})}

    def count(self, where: Where) -> int:
        return self.client.count(self.collection, count_filter=self._filter(where), exact=True).count

    def _end(self, ids: Sequence[str]) -> None:
        """Mark the live versions of `ids` as removed by this build (readers of earlier builds still see them)."""
        m = _models()
        selector = m.Filter(must=[m.FieldCondition(key=LOGICAL, match=m.MatchAny(any=list(ids))),
                                  m.FieldCondition(key="gen_from", range=m.Range(lt=self.gen)),
                                  m.FieldCondition(key="gen_to", range=m.Range(gt=self.gen))])
        self.client.set_payload(self.collection, payload={"gen_to": self.gen}, points=selector)

    def upsert(self, points: list[NewPoint]) -> None:
        m = _models()
        self._end([p.id for p in points])

        def vector(v):
            return m.SparseVector(indices=v.indices, values=v.values) if isinstance(v, Sparse) else v

        self.client.upsert(self.collection, points=[
            m.PointStruct(id=_uuid(p.id, self.gen), vector={k: vector(v) for k, v in p.vectors.items()},
                          payload={**p.payload, LOGICAL: p.id, "gen_from": self.gen, "gen_to": MAX_GEN})
            for p in points])

    def overwrite_payload(self, id: str, payload: dict) -> None:
        """A new version with the same vectors: the old payload stays what earlier builds' readers see."""
        (rec,) = self._records(Where(payload[KIND], frozenset([id])), False, True)
        self.upsert([NewPoint(id, payload, dict(rec.vector))])

    def delete(self, ids: Sequence[str]) -> None:
        self._end(ids)

    def close(self) -> None:
        pass


def _meta(client, collection: str) -> dict | None:
    """The meta point's payload (live build, manifest), None when the collection or the point is missing."""
    if not client.collection_exists(collection):
        return None
    found = client.retrieve(collection, [META_ID], with_payload=True)
    return found[0].payload if found else None


def _physical(client, alias: str) -> str | None:
    """The collection `alias` points at."""
    return next((a.collection_name for a in client.get_aliases().aliases if a.alias_name == alias), None)


class ServerIndex(QdrantIndex):
    """The live build of a Qdrant collection reached through qdrant-client."""

    def __init__(self, target: str, client, physical: str, meta: dict, where: str):
        self.target = target
        super().__init__(ServerView(client, physical, meta["live"]), meta["manifest"], f"{physical}@{meta['live']}",
                         where)

    def close(self) -> None:
        _release(self.target)


def _describe(target: str, alias: str) -> str:
    return target if target.startswith(MEMORY_PREFIX) else f"{target}/{alias}"


def _open(target: str, alias: str, client) -> ServerIndex:
    where = _describe(target, alias)
    with _calling(where):
        meta, physical = _meta(client, alias), _physical(client, alias)
    if meta is None or physical is None:
        raise NoIndex(f"no index at {where}")
    manifest = meta.get("manifest") or {}
    if manifest.get("backend") != BACKEND or manifest.get("format") != FORMAT_VERSION:
        raise IndexDamaged(f"{where} was built by {manifest.get('backend')} format {manifest.get('format')}, "
                           f"this version reads {BACKEND} format {FORMAT_VERSION}; the index needs a rebuild",
                           roots=manifest.get("roots"))
    with _calling(where):
        try:
            return ServerIndex(target, client, physical, meta, where)
        except (KeyError, TypeError) as e:
            raise IndexDamaged(f"{where} holds damaged passages ({type(e).__name__}); the index needs a rebuild",
                               roots=manifest.get("roots")) from e


def open_server(location) -> ServerIndex:
    """The live build of the collection `location` names, or an IndexUnavailable error saying what is wrong."""
    target, alias = _parse(location)
    client = _connect(target)
    try:
        return _open(target, alias, client)
    except BaseException:
        _release(target)
        raise


def _parse(location) -> tuple[str, str]:
    parsed = server_location(location)
    if parsed is None:
        raise BadRequest(f"--index {location}: a Qdrant server is named http(s)://HOST:PORT/COLLECTION")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", parsed[1]):
        raise BadRequest(f"--index {location}: a collection name is letters, digits, '_', '-' and '.'")
    return parsed


def _lenient(location, read: Callable[[dict, str | None], object], default):
    """What `read(meta, physical)` gives for the index at `location`, or `default` when it cannot be read."""
    try:
        target, alias = _parse(location)
        client = _connect(target)
    except Exception:
        return default
    try:
        meta = _meta(client, alias)
        return default if meta is None else read(meta, _physical(client, alias))
    except Exception:
        return default
    finally:
        _release(target)


def live_version(location) -> str | None:
    """The live build of the collection (None when none is or it cannot be reached)."""
    return _lenient(location, lambda meta, physical: f"{physical}@{meta['live']}", None)


def read_settings(location) -> Settings:
    """The note folders and model the collection was last built with, or Nones when unknown."""
    return _lenient(location, lambda meta, _: Settings(meta["manifest"].get("roots"), meta["manifest"].get("model_id")),
                    Settings(None, None))


def holds_an_index(location) -> bool:
    """Whether the collection holds an index (a meta point), even one this version cannot read."""
    return _lenient(location, lambda meta, _: True, False)


class ServerWriter:
    """A build of a collection reached through qdrant-client: storage.Writer (see the module's docstring)."""

    def __init__(self, location):
        self.target, self.alias = _parse(location)
        self.where = _describe(self.target, self.alias)
        self.previous: ServerIndex | None = None
        self.previous_problem: str | None = None
        self._meta: dict | None = None
        self._owner = secrets.token_hex(8)
        self._beat = 0.0
        self._client = None

    @property
    def _locks(self) -> str:
        return f"{self.alias}-lock"

    def __enter__(self) -> "ServerWriter":
        self._client = _connect(self.target)
        try:
            with _calling(self.where):
                if self._client.collection_exists(self.alias) and _physical(self._client, self.alias) is None:
                    raise BadRequest(f"{self.where}: a collection review-search did not make is named {self.alias}; "
                                     "name another collection")
                self._take_lock()
                self._meta = _meta(self._client, self.alias)
                self._clear_abandoned()
            try:
                self.previous = _open(self.target, self.alias, _connect(self.target))
            except IndexDamaged as e:
                _release(self.target)
                self.previous_problem = f"the previous index is unusable ({e}); building from the notes alone"
            except NoIndex:
                _release(self.target)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _take_lock(self) -> None:
        m = _models()
        client = self._client
        if not client.collection_exists(self._locks):
            try:
                client.create_collection(self._locks, vectors_config={})
            except Exception:  # another build created it a moment ago
                if not client.collection_exists(self._locks):
                    raise
        mine = {"owner": self._owner, "beat": time.time()}
        client.upsert(self._locks, [m.PointStruct(id=LOCK_ID, vector={}, payload=mine)], update_mode=m.UpdateMode.INSERT_ONLY)
        held = client.retrieve(self._locks, [LOCK_ID])[0].payload
        if held.get("owner") != self._owner:
            age = time.time() - float(held.get("beat", 0))
            if age < LOCK_STALE:
                raise IndexBusy(f"another build is running on {self.where} (last seen {age:.0f} s ago)")
            client.upsert(self._locks, [m.PointStruct(id=LOCK_ID, vector={}, payload=mine)])
        self._beat = time.time()

    def heartbeat(self) -> None:
        """Renew the lock now and then, so a long build is not taken for a dead one."""
        if time.time() - self._beat > BEAT_EVERY:
            self._client.set_payload(self._locks, payload={"beat": time.time()}, points=[LOCK_ID])
            self._beat = time.time()

    def _live(self) -> int:
        return 0 if self._meta is None else int(self._meta["live"])

    def _clear_abandoned(self) -> None:
        """Undo what a build that died left: its points and marks in the live collection, its new collections."""
        m = _models()
        live, client = self._live(), self._client
        physical = _physical(client, self.alias)
        for name in self._collections():
            if name != physical and int(name.rsplit("-", 1)[1]) > live:
                client.delete_collection(name)
        if physical is None:
            return
        client.delete(physical, points_selector=m.Filter(must=[m.FieldCondition(key="gen_from", range=m.Range(gt=live))]))
        client.set_payload(physical, payload={"gen_to": MAX_GEN}, points=m.Filter(must=[
            m.FieldCondition(key="gen_to", range=m.Range(gt=live, lt=MAX_GEN))]))

    def _collections(self) -> list[str]:
        pattern = re.compile(re.escape(self.alias) + r"-\d+")
        return [c.name for c in self._client.get_collections().collections if pattern.fullmatch(c.name)]

    def previous_passages(self, problems: list[Problem]) -> list[StoredPassage]:
        return [] if self.previous is None else self.previous.passages()

    def update(self, records: Sequence[StoredPassage], roots: list[str], encoder: Encoder, full: bool,
               problems: list[Problem], on_start: Callable[[int], None] | None = None,
               progress: Progress | None = None) -> Written:
        """storage.Writer.update: the changes since the live build as a new build of the collection
        (or, without reuse, a new collection), made live at the end."""
        old = self.previous
        reuse = old is not None and not full and (old.manifest["model_id"], old.manifest["dim"]) == (encoder.model_id, encoder.dim)
        if reuse and unchanged(old, records, roots):
            return Written(0, 0, 0.0, written=False)
        gen = self._live() + 1
        with _calling(self.where):
            physical = old.engine.collection if reuse else self._create(f"{self.alias}-{gen}", encoder.dim)
            before = dict(zip(old.ids, old.passages())) if reuse else {}
            embedded, seconds = write_changes(ServerView(self._client, physical, gen), records, before, encoder,
                                              on_start, progress, self.heartbeat)
            self._commit(physical, gen, manifest_of(records, BACKEND, FORMAT_VERSION, encoder, roots))
        return Written(embedded, embedded, seconds, written=True)

    def _create(self, name: str, dim: int) -> str:
        m = _models()
        multivector = m.VectorParams(size=dim, distance=m.Distance.DOT, datatype=m.Datatype.FLOAT16,
                                     multivector_config=m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM),
                                     hnsw_config=m.HnswConfigDiff(m=0))
        self._client.create_collection(
            name, vectors_config={DENSE: m.VectorParams(size=dim, distance=m.Distance.DOT), TOKENS: multivector,
                                  REVIEW: multivector, PAPER: multivector},
            sparse_vectors_config={BM25: m.SparseVectorParams(modifier=m.Modifier.IDF)})
        if not self.target.startswith(MEMORY_PREFIX):  # local mode has no payload indexes
            for field, schema in ((KIND, m.PayloadSchemaType.KEYWORD), (LOGICAL, m.PayloadSchemaType.KEYWORD),
                                  ("gen_from", m.PayloadSchemaType.INTEGER), ("gen_to", m.PayloadSchemaType.INTEGER),
                                  ("reviewer", m.PayloadSchemaType.KEYWORD), ("section", m.PayloadSchemaType.KEYWORD),
                                  ("week", m.PayloadSchemaType.INTEGER)):
                self._client.create_payload_index(name, field, field_schema=schema)
        return name

    def _commit(self, physical: str, gen: int, manifest: dict) -> None:
        """Make build `gen` live with one write, then drop what no reader can still be using."""
        m = _models()
        client = self._client
        client.upsert(physical, [m.PointStruct(id=META_ID, vector={},
                                               payload={KIND: "meta", "live": gen, "manifest": manifest})])
        before = _physical(client, self.alias)
        if before != physical:
            switch = ([m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=self.alias))] if before else []) + [
                m.CreateAliasOperation(create_alias=m.CreateAlias(collection_name=physical, alias_name=self.alias))]
            client.update_collection_aliases(switch)
        for name in self._collections():
            if name not in (physical, before):
                client.delete_collection(name)
        client.delete(physical, points_selector=m.Filter(must=[m.FieldCondition(key="gen_to", range=m.Range(lt=gen))]))

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            self.previous.close()
            self.previous = None
        if self._client is not None:
            try:
                held = self._client.retrieve(self._locks, [LOCK_ID])
                if held and held[0].payload.get("owner") == self._owner:
                    self._client.delete(self._locks, points_selector=[LOCK_ID])
            except Exception:  # the server went away: the lock goes stale and is taken over
                pass
            _release(self.target)
            self._client = None

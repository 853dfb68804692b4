"""The Qdrant backend: one reader and one way of writing changes (index.py) over two ways of
reaching Qdrant's engine, told apart by the index location.

- `qdrant:PATH`: embedded (embedded.py): Qdrant Edge shards in a folder of generations, in this
  process, with the local store's folder discipline.
- `http(s)://HOST:PORT/COLLECTION`: a Qdrant server or cluster through qdrant-client
  (server.py); `qdrant-memory:NAME` is qdrant-client's in-memory local mode, the same code with no
  server, for tests and benchmarks (it lasts as long as the process).

This module only reads locations, so naming a backend imports no engine.
"""

from __future__ import annotations

import re
from pathlib import Path

PREFIX = "qdrant:"
MEMORY_PREFIX = "qdrant-memory:"
# A typer Path option turns `http://h:6333/c` into `http:/h:6333/c`: accept both.
_URL = re.compile(r"^(https?):/{1,2}([^/]+)/([^/]+)/?$")


def location_path(location: Path | str) -> Path | None:
    """The folder a `qdrant:PATH` location names, or None for a location of another backend."""
    text = str(location)
    return Path(text[len(PREFIX):]) if text.startswith(PREFIX) else None


def server_location(location: Path | str) -> tuple[str, str] | None:
    """(url or in-memory store, collection) for a location qdrant-client serves, None for others.

    `qdrant-memory:NAME` is an in-memory store of qdrant-client's local mode, with the collection
    `review-search`. (Its on-disk local mode keeps points pickled, so it is not offered.) A URL
    must name its collection: `http(s)://HOST:PORT/COLLECTION`.
    """
    text = str(location)
    if text.startswith(MEMORY_PREFIX):
        return (text, "review-search")
    if (m := _URL.match(text)) is not None:
        return (f"{m[1]}://{m[2]}", m[3])
    return None


def is_url(location: Path | str) -> bool:
    """Whether `location` looks like a URL (so a malformed one is an error, not a folder named `http:`)."""
    return bool(re.match(r"^https?:/", str(location)))


def location_text(location: Path | str) -> str:
    """`location` as the user would type it again (a URL with its `//` back)."""
    parsed = server_location(location)
    return f"{parsed[0]}/{parsed[1]}" if parsed is not None and is_url(location) else str(location)

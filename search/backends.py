"""Which backend holds the index a location names, and what can be known of it without opening it.

Front ends and builds name an index by location (`--index`); this is the one place that maps a
location to an engine, importing the engine only when it is named:

- `qdrant:PATH`: a folder of embedded Qdrant Edge shards (qdrant/embedded.py);
- `http(s)://HOST:PORT/COLLECTION` (or `qdrant-memory:NAME`, in memory, for tests): a Qdrant
  collection reached through qdrant-client (qdrant/server.py);
- anything else: a folder of the `local` backend (store/index.py: FAISS + SQLite).

The two folder backends keep the same discipline (a `CURRENT` pointer, `settings.json`, a build
lock), so what can be known of them without opening them is read the same way.
"""

from __future__ import annotations

from pathlib import Path

from .storage import Backend, Settings, Writer


def _server(location: Path | str):
    """qdrant/server.py when `location` names a collection reached through qdrant-client, else None."""
    from .qdrant import is_url, server_location

    if server_location(location) is None and not is_url(location):
        return None
    from .qdrant import server

    return server


def open_backend(location: Path | str, verify: bool | None = None) -> Backend:
    """The live index at `location`, or an IndexUnavailable error saying what is wrong.

    `verify` checks everything against its checksums before answering; by
    default the backend decides (the local one verifies small generations whole).
    """
    from .qdrant import location_path

    if (server := _server(location)) is not None:
        return server.open_server(location)
    if (folder := location_path(location)) is not None:
        from .qdrant.embedded import open_qdrant

        return open_qdrant(folder)
    from .store.index import open_index

    return open_index(location, verify)


def open_writer(location: Path | str) -> Writer:
    """A build's writer for the index at `location` (use it with `with`: it takes the build lock)."""
    from .qdrant import location_path

    if (server := _server(location)) is not None:
        return server.ServerWriter(location)
    if (folder := location_path(location)) is not None:
        from .qdrant.embedded import QdrantWriter

        return QdrantWriter(folder)
    from .store.update import LocalWriter

    return LocalWriter(location)


def live_version(location: Path | str) -> str | None:
    """Which build is live at `location` (None when none is or it cannot be read): a long-running
    reader compares it between requests to notice a rebuild without reopening the index."""
    if (server := _server(location)) is not None:
        return server.live_version(location)
    from .store.index import live_generation

    return live_generation(_folder(location))


def read_settings(location: Path | str) -> Settings:
    """The note folders and model the index at `location` was last built with, or Nones when unknown."""
    if (server := _server(location)) is not None:
        return server.read_settings(location)
    from .store.index import read_settings as local_settings

    return local_settings(_folder(location))


def holds_an_index(location: Path | str) -> bool:
    """Whether `location` holds (or held) an index, even a damaged one: a rebuild must not guess its notes."""
    if (server := _server(location)) is not None:
        return server.holds_an_index(location)
    from .store.index import holds_an_index as local_holds

    return local_holds(_folder(location))


def location_text(location: Path | str) -> str:
    """`location` as the user would type it again, for messages (a Path turns `http://` into `http:/`)."""
    from .qdrant import location_text as text

    return text(location)


def _folder(location: Path | str) -> Path:
    """The folder behind a location of a folder backend."""
    from .qdrant import location_path

    return location_path(location) or Path(location)

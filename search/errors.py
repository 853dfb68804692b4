"""The failures the library expects, as one family every front end maps the same way.

Messages say what is wrong in words any client can use; they carry no command
syntax. A front end adds what to do about it: the CLI turns `hint` into the
command to run, the HTTP API and MCP tools send the message as it is.

    ReviewSearchError            anything the user can act on
      BadRequest                 the input must change (HTTP 400, CLI exit 2)
        NotFound                 names something the index does not hold (404)
      IndexUnavailable           no index, a damaged one, or a build in the way (503)
        NoIndex, IndexDamaged, IndexBusy
      ModelError                 the model cannot be loaded or used (500)
      DiskError                  the disk refused a write (507)

Anything else that escapes is a bug: the CLI exits 1 with a short line, the
server logs the traceback and answers a generic 500.
"""

from __future__ import annotations


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` characters, the cut marked with an ellipsis: for quoting input in messages."""
    return text if len(text) <= width else text[: width - 1] + "…"


class ReviewSearchError(Exception):
    """An expected failure; `str(e)` is one line for the user.

    `hint` names the action that fixes it (`build`, `rebuild`, `wait`, `list`), which a
    front end spells out in its own terms; `roots` are the note folders a
    rebuild should cover, when known.
    """

    status = 500
    hint: str | None = None

    def __init__(self, message: str, *, roots: list[str] | None = None):
        super().__init__(message)
        self.roots = roots or []


class BadRequest(ReviewSearchError):
    """The request itself is wrong (empty query, bad week, unknown option); the caller must change it."""

    status = 400


class NotFound(BadRequest):
    """The request names a paper, file or passage the index does not hold."""

    status = 404


class TopicNotFound(NotFound):
    """No reviewed paper matches the name given."""

    hint = "list"


class AmbiguousTopic(BadRequest):
    """Several reviewed papers match the name given; the caller must pick one."""

    def __init__(self, query: str, candidates: list[str]):
        self.candidates = candidates
        listed = "; ".join(candidates)
        super().__init__(f"{shorten(query, 80)!r} matches several papers, be more specific: {listed}")


class IndexUnavailable(ReviewSearchError):
    """The index cannot answer right now."""

    status = 503


class NoIndex(IndexUnavailable):
    """There is no index in the folder yet."""

    hint = "build"


class IndexDamaged(IndexUnavailable):
    """The index on disk is unreadable or inconsistent; rebuilding it fixes that."""

    hint = "rebuild"


class IndexBusy(IndexUnavailable):
    """Another build holds the index folder."""

    hint = "wait"


class ModelError(ReviewSearchError):
    """The embedding model cannot be loaded, or does not match the index (HTTP 500, as the base)."""


class ModelMismatch(ModelError):
    """The query model is not the one the index was built with."""


class DiskError(ReviewSearchError):
    """Writing the index failed for lack of space or permission; the previous index is untouched."""

    status = 507


class ServerError(ReviewSearchError):
    """The server cannot start (the address is taken or cannot be resolved)."""

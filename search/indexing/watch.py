"""Keeping an index current: rebuild it when review notes are added, changed or deleted.

`watch_index` watches the note folders with `watchfiles` (building once at
the start, after the watch is set up, so no change falls between) and runs the usual incremental `build_index` after each burst of changes. A
burst is one build: changes are gathered until the folders have been quiet for
`quiet_ms` (or `max_wait_ms` has passed), and changes made while a build runs
are gathered for the next one, not lost. Builds never overlap: the build lock
belongs to whoever holds it (another `index`, another watcher), and a build
that finds it taken waits `retry_seconds` and tries again.

Readers need no signal: a build swaps in a new generation atomically, and a
`SearchService` reopens the live generation on its next call.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import watchfiles

from .build import BuildSummary, build_index, build_roots
from ..model.protocol import Encoder
from ..model.encoders import load_encoder
from ..errors import BadRequest, IndexBusy
from ..backends import read_settings

OnBuild = Callable[[BuildSummary], None]
OnError = Callable[[Exception], None]

QUIET_MS = 400  # a save is several file events; editors that save all buffers make a burst
MAX_WAIT_MS = 5000  # a burst that never goes quiet (a sync tool copying a folder) still builds this often
RETRY_SECONDS = 2.0
FIRST_BUILD_AFTER_MS = 300  # also how often an idle watch wakes up; stopping is noticed sooner, every step


class NotesFilter(watchfiles.DefaultFilter):
    """Changes to the notes: `.md` files under a folder root, or a file root itself.

    watchfiles' defaults already skip editor swap and backup files and VCS folders.
    """

    def __init__(self, folders: Sequence[Path], files: Sequence[Path]):
        super().__init__()
        self._folders = list(folders)
        self._files = {str(f) for f in files}

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        if not path.lower().endswith(".md") or not super().__call__(change, path):
            return False
        return path in self._files or any(Path(path).is_relative_to(f) for f in self._folders)


def _report_error(e: Exception) -> None:
    print(f"warning: rebuild failed, still watching: {e}", file=sys.stderr)


def _roots(index_dir: Path | str, paths: Sequence[str | Path] | None) -> list[str]:
    roots = build_roots(paths, index_dir)
    missing = [r for r in roots if not Path(r).exists()]
    if missing:
        raise BadRequest(f"{missing[0]}: no such file or folder to watch")
    return roots


def _watch_plan(roots: Sequence[str]) -> tuple[list[str], NotesFilter]:
    """The folders to watch and the filter that keeps the notes' changes.

    A file root is watched through its folder: editors that save by writing a
    new file and renaming it over the old one end a watch on the file itself,
    and a deleted file could never be seen coming back.
    """
    resolved = [Path(r).resolve() for r in roots]
    folders = [r for r in resolved if r.is_dir()]
    files = [r for r in resolved if not r.is_dir()]
    watched = sorted({str(f) for f in folders} | {str(f.parent) for f in files})
    return watched, NotesFilter(folders, files)


def _build(
    roots: list[str], index_dir: Path | str, encoder: Encoder, stop: threading.Event, retry_seconds: float
) -> BuildSummary | None:
    """One incremental build, retried while another build holds the lock; None when stopped first."""
    while True:
        try:
            return build_index(roots, index_dir, encoder)
        except IndexBusy:
            if stop.wait(retry_seconds):
                return None


def watch_index(
    index_dir: Path | str,
    paths: Sequence[str | Path] | None = None,
    encoder: Encoder | None = None,
    *,
    stop_event: threading.Event | None = None,
    on_build: OnBuild | None = None,
    on_error: OnError = _report_error,
    quiet_ms: int = QUIET_MS,
    max_wait_ms: int = MAX_WAIT_MS,
    retry_seconds: float = RETRY_SECONDS,
) -> None:
    """Build `index_dir` from `paths` (default: the folders it was built from), then rebuild on every change.

    Returns when `stop_event` is set. `encoder` defaults to the index's model
    (the default one reads no weights until a passage needs embedding). The
    first build's failures raise, as from `build_index` (a missing folder, a
    model that does not match); later ones go to `on_error` and the watch goes
    on, since the next save may fix them. `on_build` receives each build's
    summary. A file given as a root is watched through its folder (recursively,
    as watchfiles watches), so that saves by rename and deletions are seen.
    """
    stop = stop_event or threading.Event()
    roots = _roots(index_dir, paths)
    watched, notes_filter = _watch_plan(roots)
    if encoder is None:
        encoder = load_encoder(read_settings(index_dir).model_id)
    # The first build runs inside the loop, on the watcher's first timeout, so
    # that the folders are already watched while it runs: saves made during it
    # are seen and built next.
    first = True
    for batch in watchfiles.watch(
        *watched, watch_filter=notes_filter, debounce=max_wait_ms, step=quiet_ms, stop_event=stop,
        rust_timeout=FIRST_BUILD_AFTER_MS, yield_on_timeout=True,
    ):
        if not (batch or first):
            continue
        try:
            summary = _build(roots, index_dir, encoder, stop, retry_seconds)
        except Exception as e:  # noqa: BLE001 - a watcher outlives bad saves; each failure is reported
            if first:
                raise
            on_error(e)
            continue
        finally:
            first = False
        if summary is not None and on_build:
            on_build(summary)


@dataclass
class Watcher:
    """A watch running on a background thread (see `watch_in_thread`)."""

    thread: threading.Thread
    stop_event: threading.Event

    def stop(self, timeout: float | None = None) -> None:
        """Ask the watch to end and wait for it; a build in progress finishes first."""
        self.stop_event.set()
        self.thread.join(timeout)


def watch_in_thread(
    index_dir: Path | str,
    paths: Sequence[str | Path] | None = None,
    encoder: Encoder | None = None,
    *,
    on_build: OnBuild | None = None,
    on_error: OnError = _report_error,
    **options,
) -> Watcher:
    """Run `watch_index` on a daemon thread next to a server; every failure, the first build's too, goes to `on_error`.

    `options` are `watch_index`'s timing keywords. Stop it with `Watcher.stop()`.
    """
    stop = threading.Event()

    def run() -> None:
        try:
            watch_index(index_dir, paths, encoder, stop_event=stop, on_build=on_build, on_error=on_error, **options)
        except Exception as e:  # noqa: BLE001 - a thread has nobody to raise to
            on_error(e)

    thread = threading.Thread(target=run, name="review-search-watch", daemon=True)
    thread.start()
    return Watcher(thread, stop)

"""The index keeps itself current: a watcher on a notes folder, the fake encoder, and a long-lived service."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import SAMPLE_WEEK, TESTS
from fakes import FakeEncoder
from search.indexing.build import BuildSummary
from search.errors import BadRequest
from search.rank.request import SearchRequest
from search.service import SearchService
from search.store.index import Writer
from search.indexing.watch import watch_in_thread, watch_index

WAIT = 20.0  # seconds any one change may take to show up in search results

WEEK4 = """# 📚 4주차

### 주제 1: Mamba: Linear-Time Sequence Modeling with Selective State Spaces
- **발표자**: 박지민

### 리뷰 1
- **리뷰어**: 최유진

Mamba는 selective state space 모델로 attention 없이 긴 시퀀스를 선형 시간에 처리한다.

---
"""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.1)


class Builds:
    """Collects the watcher's build summaries and errors, thread-safely."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.summaries: list[BuildSummary] = []
        self.errors: list[Exception] = []

    def built(self, summary: BuildSummary) -> None:
        with self._lock:
            self.summaries.append(summary)

    def failed(self, e: Exception) -> None:
        with self._lock:
            self.errors.append(e)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.summaries)


@pytest.fixture
def watched(notes: Path, tmp_path: Path):
    """A watcher running on `notes` into a fresh index, after its first build; yields (index_dir, builds)."""
    index_dir = tmp_path / "index"
    builds = Builds()
    watcher = watch_in_thread(index_dir, [notes], FakeEncoder(), on_build=builds.built, on_error=builds.failed,
                              quiet_ms=300, retry_seconds=0.2)
    try:
        wait_for(lambda: builds.count >= 1 or builds.errors, "the first build")
        assert not builds.errors, builds.errors
        yield index_dir, builds
    finally:
        watcher.stop(timeout=WAIT)
        assert not watcher.thread.is_alive(), "the watcher did not stop"


def top_hits(service: SearchService, query: str) -> list:
    return service.search(SearchRequest.parse(query, k=5)).hits


def test_search_follows_edits_additions_and_deletions(watched, notes: Path):
    index_dir, builds = watched
    service = SearchService(index_dir, FakeEncoder())
    try:
        assert not any("quantization" in h.passage.text for h in top_hits(service, "LoRA quantization"))

        edited = SAMPLE_WEEK.replace("fine-tuning 비용이 낮아진다.", "4-bit quantization 과 함께 쓰면 fine-tuning 비용이 더 낮아진다.")
        (notes / "week3.md").write_text(edited, encoding="utf-8")
        wait_for(lambda: "quantization" in top_hits(service, "LoRA quantization")[0].passage.text, "the edit")

        (notes / "week4.md").write_text(WEEK4, encoding="utf-8")
        wait_for(lambda: top_hits(service, "Mamba selective state space")[0].passage.file == "week4.md",
                 "the added file")
        assert top_hits(service, "Mamba selective state space")[0].passage.reviewer == "최유진"

        (notes / "week4.md").unlink()
        wait_for(lambda: all(h.passage.file != "week4.md" for h in top_hits(service, "Mamba selective state space")),
                 "the deletion")
        assert service.status()["files"] == 1
    finally:
        service.close()
    assert not builds.errors, builds.errors
    # Incremental: nothing but the edited and added passages was embedded after the first build.
    assert sum(s.embedded for s in builds.summaries[1:]) <= 2


def test_a_burst_of_saves_is_one_build(watched, notes: Path):
    _, builds = watched
    before = builds.count
    for i in range(6):
        (notes / "week3.md").write_text(SAMPLE_WEEK.replace("아쉬웠다", f"아쉬웠다 ({i})"), encoding="utf-8")
        time.sleep(0.03)
    wait_for(lambda: builds.count > before, "a build after the burst")
    time.sleep(2.0)  # several quiet periods: a second build would have started by now
    assert builds.count == before + 1
    assert builds.summaries[-1].embedded == 1  # the last save's text, once


def test_waits_for_a_running_build(watched, notes: Path):
    index_dir, builds = watched
    before = builds.count
    with Writer(index_dir):  # what another `index` holds while it builds
        (notes / "week4.md").write_text(WEEK4, encoding="utf-8")
        time.sleep(2.0)
        assert builds.count == before
    wait_for(lambda: builds.count > before, "the build once the lock was free")
    assert builds.summaries[-1].files == 2
    assert not builds.errors


def test_a_file_root_survives_atomic_saves_and_deletion(notes: Path, tmp_path: Path):
    """Editors save by renaming a new file over the old one; a watch on the file alone would end there."""
    week3 = notes / "week3.md"
    (notes / "other.md").write_text(WEEK4, encoding="utf-8")  # beside the root, not part of it
    builds = Builds()
    watcher = watch_in_thread(tmp_path / "index", [week3], FakeEncoder(), on_build=builds.built,
                              on_error=builds.failed, quiet_ms=200)
    try:
        wait_for(lambda: builds.count == 1, "the first build")
        for i in range(2):
            before = builds.count
            (notes / ".week3.tmp").write_text(SAMPLE_WEEK.replace("아쉬웠다", f"아쉬웠다 ({i})"), encoding="utf-8")
            os.replace(notes / ".week3.tmp", week3)
            wait_for(lambda: builds.count > before, f"atomic save {i + 1}")
            assert builds.summaries[-1].embedded == 1
        week3.unlink()
        wait_for(lambda: len(builds.errors) == 1, "the deleted root's failed build")
        before = builds.count
        week3.write_text(SAMPLE_WEEK, encoding="utf-8")
        wait_for(lambda: builds.count > before, "the file coming back")
        assert builds.summaries[-1].files == 1  # other.md never counted
        before = builds.count
        (notes / "other.md").write_text(WEEK4 + "\n더 쓴 문장.\n", encoding="utf-8")
        time.sleep(1.5)
        assert builds.count == before
    finally:
        watcher.stop(timeout=WAIT)


def test_stop_ends_a_quiet_watch_promptly(notes: Path, tmp_path: Path):
    stop = threading.Event()
    builds = Builds()
    thread = threading.Thread(
        target=watch_index, args=(tmp_path / "index", [notes], FakeEncoder()),
        kwargs={"stop_event": stop, "on_build": builds.built},
    )
    thread.start()
    wait_for(lambda: builds.count == 1, "the first build")
    started = time.monotonic()
    stop.set()
    thread.join(WAIT)
    assert not thread.is_alive() and time.monotonic() - started < 3


def test_a_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(BadRequest, match="no such file or folder"):
        watch_index(tmp_path / "index", [tmp_path / "nowhere"], FakeEncoder())
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "CURRENT").write_text("gen-lost\n")  # an index that no longer says what it covers
    with pytest.raises(BadRequest, match="does not record which notes"):
        watch_index(tmp_path / "index", None, FakeEncoder())


def test_serve_watch_command_serves_what_is_added(notes: Path, tmp_path: Path):
    """`serve --watch` as a user runs it: a process whose answers follow the folder it was built from."""
    import json
    import subprocess
    import sys
    import urllib.request

    index = tmp_path / "index"
    build_index_cli = [sys.executable, str(TESTS / "fake_cli.py")]
    subprocess.run(build_index_cli + ["index", str(notes), "--index", str(index), "--model", FakeEncoder.model_id],
                   check=True, capture_output=True)
    proc = subprocess.Popen(build_index_cli + ["serve", "--index", str(index), "--port", "0", "--watch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().split(" on ")[-1].strip()
        assert address.startswith("http://127.0.0.1:"), address

        def top_file() -> str:
            with urllib.request.urlopen(f"{address}/search?q=Mamba+selective+state+space&k=1", timeout=5) as r:
                return json.loads(r.read())[0]["file"]

        assert top_file() != "week4.md"
        (notes / "week4.md").write_text(WEEK4, encoding="utf-8")
        wait_for(lambda: top_file() == "week4.md", "serve --watch to answer from the new week")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "Traceback" not in err, err

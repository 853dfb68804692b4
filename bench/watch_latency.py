"""How long after a save a note is searchable through `review-search serve --watch`.

    python bench/watch_latency.py            # three edits, tests/corpus copied to a temp folder

Copies tests/corpus, indexes it with the default model, starts `serve --watch`
on a free local port, then edits a note three times; for each edit it polls
/search (lexical mode, so the poll itself costs nothing) until the new word is
found and reports the seconds from save to searchable. The first edit also pays
for loading the passage model into the server.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["양자컴퓨팅", "뉴로모픽", "광컴퓨팅"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        notes, index = Path(tmp) / "notes", Path(tmp) / "index"
        shutil.copytree(ROOT / "tests" / "corpus", notes)
        subprocess.run([sys.executable, "-m", "search", "index", str(notes), "--index", str(index)], check=True,
                       capture_output=True)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "search", "serve", "--index", str(index), "--port", str(port),
                                   "--watch"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def found(word: str) -> bool:
            url = f"http://127.0.0.1:{port}/search?" + urllib.parse.urlencode({"q": word, "mode": "lexical"})
            with urllib.request.urlopen(url, timeout=30) as r:
                return any(word in h["text"] for h in json.loads(r.read()))

        try:
            for _ in range(200):
                try:
                    found("x")
                    break
                except OSError:
                    time.sleep(0.2)
            seconds = []
            for word in WORDS:
                note = notes / "week1.md"
                text = note.read_text(encoding="utf-8").replace("후기\n", f"후기\n{word} 이야기가 나왔다.\n", 1)
                saved = time.perf_counter()
                note.write_text(text, encoding="utf-8")
                while not found(word):
                    if time.perf_counter() - saved > 120:
                        raise SystemExit(f"{word!r} was not searchable after 120 s")
                    time.sleep(0.1)
                seconds.append(round(time.perf_counter() - saved, 2))
                time.sleep(2)  # let the watcher settle before the next save
        finally:
            server.terminate()
            server.wait(10)
    print("save -> searchable, seconds per edit:", seconds)


if __name__ == "__main__":
    main()

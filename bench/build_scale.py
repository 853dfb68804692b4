"""Builds at growing sizes (#22): a full build, then one new week, then a no-op, each timed.

    python bench/build_scale.py                        # 300, 1,200, 5,000 and 10,000 passages
    python bench/build_scale.py --sizes 300 1200       # only these

The notes are copies of both labelled sets' weeks (174 passages a copy), each copy's topic
titles changed so every passage is new, as the issue measured. Each step runs
`python -m search index NOTES --index IDX --json` in its own process under
`/usr/bin/time -f "%e %M"`: wall seconds and peak RSS of that process (the build is one
process; torch's threads are inside it). Reported: passages, wall, embedding rate (passages
embedded / the build's own embedding seconds), peak RSS, bytes on disk per passage, then the
new week's and the no-op's wall and peak RSS. Folders go under --work (default /tmp/build-scale).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
WEEKS = [SHARED / "dev-corpus" / "weeks", SHARED / "dev-corpus-2" / "weeks"]
PER_COPY = 174
TITLE = re.compile(r"^(#+ *주제 *[0-9]+ *[:.]?.*)$", re.M)


def copy_weeks(target: Path, copies: int, first: int = 1) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for c in range(first, first + copies):
        for folder in WEEKS:
            for week in sorted(folder.glob("*.md")):
                text = TITLE.sub(lambda m: f"{m.group(1)} (copy {c})", week.read_text(encoding="utf-8"))
                (target / f"{folder.parent.name}-{c}-{week.name}").write_text(text, encoding="utf-8")


def run(notes: Path, index: Path) -> tuple[float, int, dict]:
    """(wall seconds, peak RSS in bytes, the build summary) of one `index` run in its own process."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "search", "index", str(notes),
                           "--index", str(index), "--json"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr.strip().splitlines()[-1])
    wall, rss = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss) * 1024, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 1200, 5000, 10000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/build-scale"))
    args = ap.parse_args()
    print("| passages | full build | embedding | peak RSS | bytes/passage | new week | its peak | no-op | its peak |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in args.sizes:
        work = args.work / str(size)
        shutil.rmtree(work, ignore_errors=True)
        copies = max(1, round(size / PER_COPY))
        copy_weeks(work / "notes", copies)
        wall, rss, summary = run(work / "notes", work / "index")
        gen = work / "index" / (work / "index" / "CURRENT").read_text().strip()
        per_passage = sum(p.stat().st_size for p in gen.rglob("*") if p.is_file()) / summary["passages"]
        rate = summary["embedded"] / max(summary["embed_seconds"], 1e-9)
        week = sorted(WEEKS[0].glob("*.md"))[0]
        (work / "notes" / "new-week.md").write_text(
            TITLE.sub(lambda m: f"{m.group(1)} (new)", week.read_text(encoding="utf-8")), encoding="utf-8")
        week_wall, week_rss, _ = run(work / "notes", work / "index")
        noop_wall, noop_rss, noop = run(work / "notes", work / "index")
        assert not noop["written"], "a no-op wrote a generation"
        print(f"| {summary['passages']:,} | {wall:.1f} s | {rate:.1f}/s | {rss / 2**30:.2f} GiB | {per_passage / 1024:.1f} KB "
              f"| {week_wall:.1f} s | {week_rss / 2**30:.2f} GiB | {noop_wall:.2f} s | {noop_rss / 2**30:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()

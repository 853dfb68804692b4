"""Damage and hostile places: nothing a disk, a pointer or a broken file does may lose the index,
print a traceback, or leave the tool unable to repair itself (issue #10, items 1, 2, 4–8)."""

from __future__ import annotations

import errno
import random
import resource
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from search.indexing.build import build_index
from search.cli import app
from search.errors import DiskError, IndexDamaged
from search.store.index import CURRENT, VERIFY_ON_OPEN_BYTES, open_index
from conftest import TESTS
from fakes import FakeEncoder


runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def built(notes: Path, tmp_path: Path, fake_model) -> Path:
    (notes / "week4.md").write_text((notes / "week3.md").read_text(encoding="utf-8").replace("위스퍼", "새 모델"), encoding="utf-8")
    result = invoke("index", notes, "--index", tmp_path / "idx", "--model", fake_model.model_id)
    assert result.exit_code == 0, result.output
    return tmp_path / "idx"


def size(index: Path) -> int:
    with open_index(index) as idx:
        return idx.size


def generation(index: Path) -> Path:
    return index / (index / CURRENT).read_text().strip()


def damage(path: Path, how: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 3]
    elif how == "zero":
        data = bytearray(len(data))
    else:
        for _ in range(8):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def victims(index: Path) -> list[Path]:
    gen = generation(index)
    return [index / CURRENT] + sorted(p for p in gen.rglob("*") if p.is_file())


@pytest.mark.parametrize("how", ["truncate", "zero", "flip"])
def test_damage_matrix(built: Path, notes: Path, how: str):
    """Every file of a generation, damaged three ways: one-line answers, then `index --full` restores all."""
    before = size(built)
    rng = random.Random(how)
    for victim in [p.relative_to(built) for p in victims(built)]:
        target = built / victim if victim.name == CURRENT else generation(built) / victim.relative_to(victim.parts[0])
        damage(target, how, rng)
        for args in (["query", "hallucination"], ["list"], ["related", "LoRA"]):
            result = invoke(*args, "--index", built)
            if result.exit_code != 0:  # a flip can land where nothing reads it; any failure must be clean
                line = one_line_error(result)
                assert "damaged" in line or "missing generation" in line or "cannot read" in line, line
                assert f"rebuild with `review-search index {shlex.quote(str(notes.resolve()))} --full --index {built}`" in line, line
        repaired = invoke("index", "--full", "--index", built)
        assert repaired.exit_code == 0, (victim, repaired.output)
        assert size(built) == before, victim
        assert invoke("query", "hallucination", "--index", built).exit_code == 0


def test_damaged_pointer_never_shrinks_the_index_to_seeds(built: Path, monkeypatch):
    before = size(built)
    (built / CURRENT).write_bytes(b"\xff\xfe not utf-8")
    line = one_line_error(invoke("query", "x", "--index", built))
    assert "cannot read (not text)" in line
    monkeypatch.chdir(TESTS.parent)  # a folder with seeds/ in it
    result = invoke("index", "--full", "--index", built)
    assert result.exit_code == 0 and size(built) == before


def test_full_rebuild_keeps_files_that_became_unreadable(built: Path, notes: Path):
    before = size(built)
    (notes / "week4.md").write_text("# 4주차", encoding="utf-16")
    result = invoke("index", "--full", "--index", built)
    assert result.exit_code == 0, result.output
    assert size(built) == before and "kept from unreadable files" in result.output
    assert "week4.md: kept its 3 passages" in result.output


def test_flipped_vector_bits_are_found_and_not_carried_on(built: Path, notes: Path, fake_encoder):
    gen = generation(built)
    data = bytearray((gen / "dense.faiss").read_bytes())
    data[-97] ^= 0x40  # the top exponent bit of a float in the last vector
    (gen / "dense.faiss").write_bytes(bytes(data))
    assert "dense.faiss is damaged" in one_line_error(invoke("query", "hallucination", "--index", built))
    # past the size where opening checksums everything, the file is checked when first read
    with open_index(built, verify=False) as idx, pytest.raises(IndexDamaged, match="dense.faiss is damaged"):
        idx.dense_search(idx.vectors([idx.size - 1])[0] * 0 + 1 / np.sqrt(64), idx.size)
    summary = build_index(None, built, fake_encoder)
    assert summary.embedded == summary.passages  # nothing reused from the damaged file
    assert any("checksum mismatch" in p.message for p in summary.problems)
    with open_index(built) as idx:
        assert np.allclose(np.linalg.norm(idx.vectors(), axis=1), 1, atol=1e-5)


def test_corrupt_passages_db_is_one_line_and_full_rebuild_does_not_need_it(built: Path, notes: Path):
    before = size(built)
    db = generation(built) / "passages.sqlite"
    data = bytearray(db.read_bytes())
    rng = random.Random(3)
    for _ in range(8):
        data[rng.randrange(len(data))] = rng.randrange(256)
    db.write_bytes(bytes(data))
    one_line_error(invoke("query", "x", "--index", built))
    result = invoke("index", notes, "--full", "--index", built)
    assert result.exit_code == 0 and size(built) == before


def test_truncated_lexical_file_is_damage_not_abort(built: Path):
    victim = next((generation(built) / "lexical").glob("*.npy"))
    victim.write_bytes(victim.read_bytes()[:20])
    line = one_line_error(invoke("query", "hallucination", "--index", built))
    assert "damaged" in line
    with open_index(built, verify=False) as idx, pytest.raises(IndexDamaged, match="lexical"):
        idx.lexical


@pytest.mark.parametrize("victim", ["groups.index.npy", "data.csc.index.npy", "params.index.json"])
def test_damaged_paper_lexical_file_is_damage_not_abort(built: Path, victim: str):
    target = generation(built) / "paper_lexical" / victim
    target.write_bytes(target.read_bytes()[:20])
    line = one_line_error(invoke("query", "hallucination", "--index", built))
    assert "damaged" in line and "paper_lexical" in line
    with open_index(built, verify=False) as idx, pytest.raises(IndexDamaged, match="paper_lexical"):
        idx.paper_lexical


def test_paper_lexical_without_its_row_groups_is_damage(built: Path):
    # Large generations check each file as it is first read: a missing one is unreadable.
    (generation(built) / "paper_lexical" / "groups.index.npy").unlink()
    with open_index(built, verify=False) as idx, pytest.raises(IndexDamaged, match="groups.index.npy is damaged"):
        idx.paper_lexical


def test_index_path_that_is_a_file(tmp_path: Path, notes: Path, fake_model):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    for args in (["query", "x"], ["index", notes, "--model", fake_model.model_id], ["list"]):
        line = one_line_error(invoke(*args, "--index", f))
        assert "is a file, not an index folder" in line
    assert fake_model.embedded == []  # found before any work


def test_pointer_that_is_a_folder_is_set_aside_by_a_build(built: Path, notes: Path, fake_model):
    (built / CURRENT).unlink()
    (built / CURRENT).mkdir()
    one_line_error(invoke("query", "x", "--index", built))
    result = invoke("index", notes, "--index", built)
    assert result.exit_code == 0, result.output
    assert size(built) > 0 and not list(built.glob(".tmp-*")) and len(list(built.glob("gen-*"))) <= 2
    assert list(built.glob("CURRENT.moved-aside-*"))


def test_read_only_index_folder_is_one_line(built: Path, notes: Path, monkeypatch):
    import filelock

    def refuse(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)  # root ignores chmod, so the refusal is simulated
    line = one_line_error(invoke("index", notes, "--index", built))
    assert "permission denied" in line and "previous index is unchanged" in line


def test_disk_full_keeps_the_old_index_and_says_so(built: Path, notes: Path, tmp_path: Path):
    before = size(built)
    (notes / "week5.md").write_text((notes / "week3.md").read_text(encoding="utf-8") * 40, encoding="utf-8")
    limit = 16 * 1024  # bytes any one file may grow to: the new passages table will not fit

    proc = subprocess.run(
        [sys.executable, str(TESTS / "fake_cli.py"), "index", str(notes), "--index", str(built)],
        capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "file size limit exceeded" in proc.stderr or "no space" in proc.stderr
    assert size(built) == before and not list(built.glob(".tmp-*"))


def test_disk_errors_map_to_disk_error():
    from search.store.index import _disk_error

    assert isinstance(_disk_error(OSError(errno.ENOSPC, "x"), Path("i")), DiskError)
    assert "no space left on device" in str(_disk_error(OSError(errno.ENOSPC, "x"), Path("i")))
    assert _disk_error(OSError(errno.ENOENT, "x"), Path("i")) is None


@pytest.mark.parametrize("victim", ["tokens/codes.npy", "lexical/data.csc.index.npy", "dense.faiss", "passages.sqlite"])
def test_an_unreadable_file_in_the_live_generation_is_damage_and_a_rebuild_replaces_it(built: Path, monkeypatch, victim):
    import builtins

    path = generation(built) / victim
    if not path.exists():
        pytest.skip(f"{victim} is not part of this index format")
    real_open, real_os_open = builtins.open, __import__("os").open

    # root ignores chmod 000, so the kernel's refusal is simulated for the one file
    def guard(call):
        def guarded(file, *args, **kwargs):
            if str(file).split("?")[0].removeprefix("file:") == str(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return call(file, *args, **kwargs)
        return guarded

    monkeypatch.setattr(builtins, "open", guard(real_open))
    monkeypatch.setattr("os.open", guard(real_os_open))
    for args in (["query", "hallucination"], ["list"]):
        result = invoke(*args, "--index", built)
        if result.exit_code != 0:
            line = one_line_error(result)
            assert "damaged" in line and "internal error" not in line and "rebuild with" in line, line
    rebuilt = invoke("index", "--index", built)
    assert rebuilt.exit_code == 0, rebuilt.output
    monkeypatch.undo()
    assert invoke("query", "hallucination", "--index", built).exit_code == 0
    assert str(path) != str(generation(built) / victim)


# Above VERIFY_ON_OPEN_BYTES a generation's checksums are not read on open: each of these files is
# checked against its own when first read, and for the numbers it can hold.
NUMERIC = ["tokens/basis.npy", "tokens/mean.npy", "tokens/scales.npy", "lexical/indices.csc.index.npy",
           "lexical/data.csc.index.npy", "lexical/indptr.csc.index.npy", "dense.faiss"]


def answers(index: Path) -> list:
    return [invoke(*args, "--index", index) for args in
            (["query", "hallucination", "--json"], ["query", "LoRA 행렬", "--json", "--mode", "hybrid"],
             ["related", "LoRA", "--json"], ["who", "음성 인식", "--json"])]


@pytest.mark.parametrize("victim", NUMERIC)
@pytest.mark.parametrize("how", ["inf", "xor20", "xor200"])
def test_unverified_damage_to_numbers_is_an_error_never_a_different_answer(built: Path, monkeypatch, victim, how):
    monkeypatch.setattr("search.store.index.VERIFY_ON_OPEN_BYTES", 0)  # as on a large index
    undamaged = answers(built)
    assert all(r.exit_code == 0 for r in undamaged), [r.output for r in undamaged]
    before = [r.stdout for r in undamaged]
    path = generation(built) / victim
    data = bytearray(path.read_bytes())
    rng = random.Random(f"{victim}{how}")
    start = 128 if path.suffix == ".npy" else 0  # past the .npy header: damage to it fails to load anyway
    if how == "inf":  # a float32 +inf over a few values (float16 files get two of them per write)
        for _ in range(3):
            i = rng.randrange(start, len(data) - 4) & ~3
            data[i:i + 4] = np.array([np.inf], np.float32).tobytes()
    else:
        for _ in range(int(how[3:])):
            data[rng.randrange(start, len(data))] ^= 0xFF
    path.write_bytes(bytes(data))
    for result, expected in zip(answers(built), before):
        if result.exit_code == 0:
            assert result.stdout == expected, f"{victim} damaged ({how}) changed an answer without an error"
        else:
            line = one_line_error(result)
            assert "damaged" in line and "internal error" not in line and "rebuild with" in line, line


def test_check_passes_a_sound_index(built: Path):
    result = invoke("check", "--index", built)
    assert result.exit_code == 0, result.output
    assert f"ok, {len(victims(built)) - 1} files" in result.output and f"{size(built)} passages verified" in result.output
    data = invoke("check", "--index", built, "--json")
    assert data.exit_code == 0 and '"ok": true' in data.output


@pytest.mark.parametrize("how", ["truncate", "zero", "flip"])
def test_check_names_every_damaged_file_even_where_queries_would_not_look(built: Path, notes: Path, monkeypatch, how: str):
    """Queries on a large generation verify only what they read; `check` reads it all, whatever its size."""
    monkeypatch.setattr("search.store.index.VERIFY_ON_OPEN_BYTES", 0)  # every generation counts as large
    rng = random.Random(how)
    gen = generation(built)
    for target in sorted(p for p in gen.rglob("*") if p.is_file()):
        saved = target.read_bytes()
        damage(target, how, rng)
        if target.read_bytes() == saved:  # zero-filling a file of zeros changes nothing to find
            continue
        line = one_line_error(invoke("check", "--index", built))
        assert str(target) in line, line  # the manifest too: its own digest beside it says so
        assert "--full" in line, line
        target.write_bytes(saved)
    assert invoke("check", "--index", built).exit_code == 0


def test_check_without_an_index_is_one_line(tmp_path: Path):
    line = one_line_error(invoke("check", "--index", tmp_path / "none"))
    assert "no index at" in line


def test_flipped_token_codes_on_a_large_generation_are_damage_not_another_ranking(built: Path, monkeypatch):
    """Token codes are uint8, so any flip is a plausible number: only their block digests can tell."""
    monkeypatch.setattr("search.store.index.VERIFY_ON_OPEN_BYTES", 0)  # checksums are not verified on open
    codes = generation(built) / "tokens" / "codes.npy"
    header = np.load(codes, mmap_mode="r").offset
    saved = codes.read_bytes()
    rng = random.Random(7)
    for _ in range(5):
        data = bytearray(saved)
        data[rng.randrange(header, len(data))] ^= 1 << rng.randrange(8)
        codes.write_bytes(bytes(data))
        line = one_line_error(invoke("query", "hallucination", "--index", built))
        assert f"{codes} is damaged (block" in line and "--full" in line, line
    codes.write_bytes(saved)
    assert invoke("query", "hallucination", "--index", built).exit_code == 0


def test_block_check_reads_each_block_once(tmp_path: Path):
    from search.store.blocks import BLOCK_BYTES, BlockCheck, block_digests

    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * (3 * BLOCK_BYTES // 256 + 7))
    check = BlockCheck(path, block_digests(path), ValueError)
    check.verify(np.array([[10, BLOCK_BYTES + 1]]))
    assert check._verified.tolist() == [True, True, False, False]
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    data[3 * BLOCK_BYTES + 1] ^= 1
    path.write_bytes(bytes(data))
    check.verify(np.array([[0, 10]]))  # block 0 was verified before the change: not read again
    with pytest.raises(ValueError, match="block 3 does not match"):
        check.verify(np.array([[2 * BLOCK_BYTES, len(data)]]))
    with pytest.raises(ValueError, match="does not match its block digests"):
        BlockCheck(path, block_digests(path)[:2], ValueError)


# ---- the damage matrix on a generation past VERIFY_ON_OPEN_BYTES, built for real (issue #24) ----

class WideFake(FakeEncoder):
    """The fake encoder at e5's width, so the token codes weigh what real ones do (128 bytes a token)."""

    model_id = "fake/trigram-384"
    dim = 384


LARGE_ANSWERS = (
    ["query", "whisper hallucination 해결", "--json"],
    ["query", "LoRA adapter 학습", "--json", "--mode", "hybrid", "--reviewer", "박민경"],
    ["query", "retrieval 평가 데이터", "--json", "--mode", "dense", "--week", "3-9"],
    ["query", "음성 모델 잡음", "--json", "--mode", "lexical", "-k", "3"],
    ["who", "음성 인식 모델", "--json"],
    ["list", "--json"],
)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> tuple[Path, Path]:
    from search.model.encoders import register_encoder
    from synthetic import write_weeks

    register_encoder(WideFake.model_id, WideFake)
    root = tmp_path_factory.mktemp("large")
    notes = write_weeks(root / "notes", weeks=18, sentences=16)
    build_index([notes], root / "idx", WideFake())
    yield root / "idx", notes
    register_encoder(WideFake.model_id, None)


def large_answers(index: Path, notes: Path) -> list:
    title = next(line for line in (notes / "week1.md").read_text(encoding="utf-8").splitlines() if line.startswith("### 주제"))
    runs = [*LARGE_ANSWERS, ["related", title.split(": ", 1)[1], "--json"]]
    return [invoke(*args, "--index", index) for args in runs]


def without_created(output: str) -> str:
    import re

    return re.sub(r'"created": "[^"]*"', "", output)


def test_damage_on_a_large_generation_is_an_error_or_the_same_answer_and_a_rebuild_restores_it(large):
    index, notes = large
    gen = generation(index)
    assert sum(p.stat().st_size for p in gen.rglob("*") if p.is_file()) > VERIFY_ON_OPEN_BYTES
    undamaged = large_answers(index, notes)
    assert all(r.exit_code == 0 for r in undamaged), [r.output for r in undamaged]
    before = [r.stdout for r in undamaged]
    rng = random.Random(24)
    files = [index / CURRENT] + sorted(p for p in gen.rglob("*") if p.is_file())
    failures = []
    for path in files:
        saved = path.read_bytes()
        for how in ("truncate", "zero", "xor20", "xor200"):
            data = bytearray(saved)
            if how == "truncate":
                data = data[: len(data) // 3]
            elif how == "zero":
                data = bytearray(len(data))
            else:
                for _ in range(int(how[3:])):
                    data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
            path.write_bytes(bytes(data))
            for result, expected in zip(large_answers(index, notes), before):
                if result.exit_code == 0:
                    if result.stdout != expected:
                        failures.append(f"{path.name} {how}: {result.stdout[:80]!r} changed without an error")
                    continue
                line = one_line_error(result)
                if "internal error" in line or not any(s in line for s in ("damaged", "missing generation", "cannot read")):
                    failures.append(f"{path.name} {how}: {line}")
            path.write_bytes(saved)
    assert not failures, "\n".join(failures)
    # A plain `index` (no paths, no --full) repairs each part (all of its files damaged at once), with every answer as before.
    parts: dict[str, list[Path]] = {}
    for p in files[1:]:
        parts.setdefault(p.relative_to(gen).parts[0], []).append(p.relative_to(gen))
    for rel, part in parts.items():
        for name in part:
            target = generation(index) / name
            data = bytearray(target.read_bytes())
            for _ in range(200):
                data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
            target.write_bytes(bytes(data))
        result = invoke("index", "--index", index)
        assert result.exit_code == 0, (rel, result.output)
        after = [r.stdout for r in large_answers(index, notes)]
        assert [without_created(a) for a in after] == [without_created(b) for b in before], rel

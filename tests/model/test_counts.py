"""Token counts remembered between builds (search/model/counts.py)."""

from __future__ import annotations

from search.model.counts import CountCache


class Counter:
    def __init__(self):
        self.asked: list[str] = []

    def __call__(self, text: str) -> int:
        self.asked.append(text)
        return len(text.split()) + 2


def test_each_text_is_counted_once_across_processes(tmp_path):
    first = Counter()
    cache = CountCache(tmp_path / "counts.sqlite", "t1", first)
    assert [cache("가 나 다"), cache("가 나 다"), cache("하나")] == [5, 5, 3]
    assert first.asked == ["가 나 다", "하나"]
    cache.save()
    again = Counter()
    later = CountCache(tmp_path / "counts.sqlite", "t1", again)  # a later build, in another process
    assert later("가 나 다") == 5 and later("하나") == 3 and again.asked == []
    other = Counter()
    assert CountCache(tmp_path / "counts.sqlite", "t2", other)("하나") == 3 and other.asked == ["하나"]  # another tokenizer


def test_a_damaged_or_unwritable_cache_only_costs_the_counting(tmp_path):
    path = tmp_path / "counts.sqlite"
    path.write_bytes(b"not a database" * 100)
    counter = Counter()
    cache = CountCache(path, "t", counter)
    assert cache("a b") == 4 and counter.asked == ["a b"]
    cache.save()
    assert CountCache(path, "t", Counter())("a b") == 4  # started again, and kept this time

    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")
    counter = Counter()
    cache = CountCache(blocked / "counts.sqlite", "t", counter)  # no folder can be made there
    assert cache("a b") == 4 and cache("a b") == 4 and counter.asked == ["a b"]
    cache.save()  # nothing to write to: no error

"""Digests of a file's fixed-size blocks, each checked the first time a query reads it.

A generation's whole-file checksums are verified on open only while it is
small (store.index.VERIFY_ON_OPEN_BYTES); the token codes, the bulk of a large
index, are read a few passages at a time, so hashing them whole on every cold
query would cost what the index weighs. Checking just the blocks a query
touches keeps the cost to what is read, and a flipped bit that leaves the
numbers plausible is still found before it can change a ranking.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

BLOCK_BYTES = 8192  # a passage's codes (~14 KB) span two or three blocks
# CRC-32 finds every burst of up to 32 flipped bits and misses other damage with odds of 2^-32:
# damage, not tampering, is what it guards against. blake2b made the blocks of a 400-passage late
# pool cost 12 ms a cold query; CRC-32 hashes four times as fast (docs/performance.md).


def block_digests(path: Path) -> np.ndarray:
    """The CRC-32 of each BLOCK_BYTES of `path`, as a uint32 array."""
    with open(path, "rb") as f:
        return np.array([zlib.crc32(block) for block in iter(lambda: f.read(BLOCK_BYTES), b"")], np.uint32)


class BlockCheck:
    """Verifies byte ranges of one file against its block digests, each block once per process."""

    def __init__(self, path: Path, digests: np.ndarray, damaged: Callable[[str], Exception]):
        self.path, self.digests, self._damaged = path, digests, damaged
        self._size = path.stat().st_size
        self._verified = np.zeros(len(digests), bool)
        if digests.ndim != 1 or digests.dtype != np.uint32 or len(digests) != -(-self._size // BLOCK_BYTES):
            raise damaged(f"{path} does not match its block digests ({self._size} bytes)")

    def verify(self, ranges: np.ndarray) -> None:
        """Check the blocks covering each [start, end) byte range in `ranges` (an (n, 2) array)."""
        if not len(ranges):
            return
        # Mark the blocks each range covers (+1 at its first, -1 past its last), then read the
        # unverified ones in runs of neighbours: one read a run, not one a block.
        edges = np.zeros(len(self.digests) + 1, np.int64)
        np.add.at(edges, ranges[:, 0] // BLOCK_BYTES, 1)
        np.add.at(edges, (ranges[:, 1] - 1) // BLOCK_BYTES + 1, -1)
        todo = np.flatnonzero((np.cumsum(edges[:-1]) > 0) & ~self._verified)
        if not len(todo):
            return
        runs = np.split(todo, np.flatnonzero(np.diff(todo) != 1) + 1)
        expected = self.digests.tolist()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for run in runs:
                first, count = int(run[0]), len(run)
                data = memoryview(os.pread(fd, count * BLOCK_BYTES, first * BLOCK_BYTES))
                for i in range(count):
                    if zlib.crc32(data[i * BLOCK_BYTES : (i + 1) * BLOCK_BYTES]) != expected[first + i]:
                        raise self._damaged(f"{self.path} is damaged (block {first + i} does not match its digest)")
        finally:
            os.close(fd)
        self._verified[todo] = True

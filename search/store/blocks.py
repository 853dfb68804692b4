"""Digests of a file's fixed-size blocks, each checked the first time a query reads it.

A generation's whole-file checksums are verified on open only while it is
small (store.index.VERIFY_ON_OPEN_BYTES); the token codes, the bulk of a large
index, are read a few passages at a time, so hashing them whole on every cold
query would cost what the index weighs. Checking just the blocks a query
touches keeps the cost to what is read, and a flipped bit that leaves the
numbers plausible is still found before it can change a ranking.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

BLOCK_BYTES = 8192  # a passage's codes (~14 KB) span two or three blocks
DIGEST_BYTES = 8


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def block_digests(path: Path) -> np.ndarray:
    """One digest per BLOCK_BYTES of `path`, as an (n, DIGEST_BYTES) uint8 array."""
    out = []
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK_BYTES), b""):
            out.append(np.frombuffer(_digest(block), np.uint8))
    return np.vstack(out) if out else np.zeros((0, DIGEST_BYTES), np.uint8)


class BlockCheck:
    """Verifies byte ranges of one file against its block digests, each block once per process."""

    def __init__(self, path: Path, digests: np.ndarray, damaged: Callable[[str], Exception]):
        self.path, self.digests, self._damaged = path, digests, damaged
        self._size = path.stat().st_size
        self._verified = np.zeros(len(digests), bool)
        if digests.ndim != 2 or digests.shape[1] != DIGEST_BYTES or len(digests) != -(-self._size // BLOCK_BYTES):
            raise damaged(f"{path} does not match its block digests ({self._size} bytes)")

    def verify(self, ranges: np.ndarray) -> None:
        """Check the blocks covering each [start, end) byte range in `ranges` (an (n, 2) array)."""
        if not len(ranges):
            return
        first, last = ranges[:, 0] // BLOCK_BYTES, (ranges[:, 1] - 1) // BLOCK_BYTES
        spans = [np.arange(a, b + 1) for a, b in zip(first, last)]
        blocks = np.unique(np.concatenate(spans))
        todo = blocks[~self._verified[blocks]]
        if not len(todo):
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for b in todo.tolist():
                if _digest(os.pread(fd, BLOCK_BYTES, b * BLOCK_BYTES)) != self.digests[b].tobytes():
                    raise self._damaged(f"{self.path} is damaged (block {b} does not match its digest)")
        finally:
            os.close(fd)
        self._verified[todo] = True

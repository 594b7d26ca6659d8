"""The payload log on disk: a JSON-lines file that rotates into gzipped files, and the reader
that walks the rotations and the live file in order (what `infergate replay` reads).

Naming: the live file is PATH; a rotation is PATH.N.gz, N counting up from 1, so the order of
the records is the order of N, then PATH.

What must always hold: a line is written whole (the writer flushes after each batch; a reader
skips a last line cut by a crash); rotating never loses a line: the live file is renamed
before it is compressed, and the compressed copy replaces it only once complete; only the
newest `keep` rotations stay (0: all). The writer side blocks (file I/O): it runs in a
thread, never on the event loop.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger("infergate.payload")


def rotations(path: Path) -> list[Path]:
    """PATH.N.gz beside `path`, oldest (lowest N) first."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)\.gz")
    found = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


class RotatingLog:
    """Appends bytes to `path`; once it holds `limit` bytes or more it becomes PATH.N.gz and a
    new PATH starts."""

    def __init__(self, path: Path, limit: int, keep: int) -> None:
        self.path = path
        self.limit = limit
        self.keep = keep
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open between batches
            self._size = self._file.tell()
        self._file.write(data)
        self._size += len(data)

    def flush(self) -> None:
        """End of a batch: the lines reach the file; rotate when it is full."""
        if self._file is None:
            return
        self._file.flush()
        if self._size >= self.limit:
            self.rotate()

    def rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self.path.exists():
            return
        olds = rotations(self.path)
        n = 1 + max((int(p.name.rsplit(".", 2)[-2]) for p in olds), default=0)
        moved = self.path.with_name(f"{self.path.name}.{n}")
        os.replace(self.path, moved)  # new lines go to a new PATH from here on
        done = moved.with_name(moved.name + ".gz")
        part = done.with_name(done.name + ".part")
        with open(moved, "rb") as src, gzip.open(part, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(part, done)
        moved.unlink()
        if self.keep:
            for old in (olds + [done])[:-self.keep]:
                old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from f


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a payload log: its rotations (oldest first), then the live file. A
    rotation named directly is read alone. Lines that are not whole JSON objects (the last line
    of a file a crash cut short) are skipped and logged."""
    files = [path] if path.name.endswith(".gz") else [*rotations(path), path]
    for f in files:
        if not f.exists():
            continue
        for i, line in enumerate(_lines(f), 1):
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("%s:%d: not a whole record, skipped", f, i)
                continue
            if isinstance(rec, dict):
                yield rec

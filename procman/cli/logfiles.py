"""Per-daemon log files with rotation by size (``log_file``, ``log_size``, ``log_count``).

Every line procman shows for a daemon (its output, its starts, exits and restarts) is also appended
to its file, with the time, as it happens: the file outlives procman. When the next line would take
the file past ``log_size`` bytes it is rotated: ``web.log`` becomes ``web.log.1``, ``web.log.1``
becomes ``web.log.2``, ..., and the oldest beyond ``log_count`` files in all is deleted; so the
files of one daemon never hold more than ``log_size * log_count`` bytes, and no line is split or
lost across a rotation. A line longer than ``log_size`` is written whole, in a file of its own.
A file that cannot be written (a full disk) is reported once on procman's own output and retried
at the next line.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO


class RotatingFile:
    def __init__(self, path: Path, size: int, count: int) -> None:
        self.path, self.size, self.count = path, size, count
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._written = 0
        self.failed: str | None = None  # why the last write failed, until one succeeds

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open between lines
            self._written = self._file.tell()
        return self._file

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.count <= 1:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.path.with_name(f"{self.path.name}.{self.count - 1}")
        oldest.unlink(missing_ok=True)
        for n in range(self.count - 2, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def write(self, line: str) -> str | None:
        """Append one line; returns why it failed the first time it does (None otherwise)."""
        data = line.encode("utf-8", "replace") + b"\n"
        with self._lock:
            try:
                f = self._open()
                if self._written and self._written + len(data) > self.size:
                    self._rotate()
                    f = self._open()
                f.write(data)
                self._written += len(data)
            except OSError as exc:
                first = self.failed is None
                self.failed = f"cannot write {self.path}: {exc.strerror or exc}"
                if self._file is not None:
                    self._file.close()
                    self._file = None
                return self.failed if first else None
            self.failed = None
            return None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

"""Append-only JSON-lines answer logs that never lose a confirmed record.

Each record is one JSON object on one line, written with a single ``write`` on a file opened for
appending and fsynced before the call returns. Files are never rewritten in place. A kill during a
write can leave a torn last line; reading skips it with a warning, and the next append first ends
that fragment with a newline so it never merges with a valid record.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from medvae_engine.errors import OutputError


class TornLogWarning(UserWarning):
    """A log held a partial or unreadable line (a write interrupted by a crash); it was skipped."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_log(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All complete records of a log and warnings about skipped torn or unreadable lines."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], []
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines)
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            what = "torn last line (interrupted write)" if last else "unreadable line"
            problems.append(f"{path}: line {number}: {what} skipped")
            continue
        records.append(record)
    for problem in problems:
        warnings.warn(problem, TornLogWarning, stacklevel=2)
    return records, problems


class AnswerLog:
    """One reader's append-only log: ``append`` returns only once the record is on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._needs_newline = self._ends_without_newline()

    def _ends_without_newline(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return False
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line and fsync it (and the folder when the file is new)."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        if self._needs_newline:
            line = "\n" + line
        data = line.encode("utf-8")
        created = not self.path.exists()
        new_folder = not self.path.parent.exists()
        try:
            if created:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot save the answer ({exc.strerror})") from None
        self._needs_newline = False
        if new_folder:
            _fsync_dir(self.path.parent.parent)
        if created:
            _fsync_dir(self.path.parent)

    def read(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The log's complete records and warnings (see ``read_log``)."""
        return read_log(self.path)

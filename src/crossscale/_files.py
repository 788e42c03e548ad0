"""Atomic file replacement: a reader sees the old file or the new one, never a half-written one; and when a writer
rewrites a derived index file after ingest work (:class:`SaveSchedule`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

__all__ = ["ASSUMED_WRITE_BYTES_PER_SECOND", "TEMP_SUFFIX", "SaveSchedule", "atomic_write", "atomic_write_with"]

logger = logging.getLogger(__name__)

#: suffix of the temporary files :func:`atomic_write` makes; a crash can leave one behind.
TEMP_SUFFIX = ".tmp"


def _create_temp(target: Path) -> tuple[int, str]:
    """A new file beside ``target``, created with mode 0o666 so that the kernel applies the umask."""
    while True:
        tmp = str(target.parent / f"{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def atomic_write(path: str | os.PathLike[str], data: bytes | Iterable[bytes | memoryview]) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, then ``os.replace``.

    The file gets the mode a plain ``open(path, "w")`` would give (``0o666`` less the umask), not
    ``mkstemp``'s private ``0o600``: readers in other processes or accounts may need it. On any failure
    (full disk, an interrupt) the temporary file is removed and ``path`` is left as it was.
    """
    parts = [data] if isinstance(data, bytes | bytearray | memoryview) else data

    def write(f: BinaryIO) -> None:
        for part in parts:
            f.write(part)

    atomic_write_with(path, write)


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """:func:`atomic_write` of what ``write`` writes to the (temporary) file it is given: for data streamed out
    piece by piece, e.g. a faiss index, without a copy of it all in memory."""
    target = Path(path)
    fd, tmp = _create_temp(target)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


#: how fast a derived index file is assumed to be written before a write of it has been timed (measured on the
#: project's CI machines: a 690 MB chunk index file in 0.63 s)
ASSUMED_WRITE_BYTES_PER_SECOND = 1e9


@dataclasses.dataclass
class SaveSchedule:
    """Whether a writer rewrites a derived index file (the chunk index, the keypoint index) after ingest work.

    Such a file is written whole, so writing it after every ``index()`` call makes many small calls into a large
    workspace quadratic: at 1,000 parents of 141 float32 1280-d vectors the chunk index file alone is 690 MB and
    0.6 s to write, about half the time of indexing one parent. A write is due once it costs at most ``share``
    of the ingest time spent since the last one, or whenever the last one took at most ``quick_seconds``
    (small workspaces: after every call). What is not written yet is in the store: the next process to open the
    workspace catches its index up from it, so a crash loses nothing; ``save()`` and ``close()`` always write.

    Attributes:
        share: the most of the ingest time that writing may take.
        quick_seconds: a write this fast is always due.
        last_write_seconds: how long the last write took (before one is timed: estimated from the file's size,
            :meth:`for_file`).
        work_seconds: the ingest time counted since the last write.
    """

    share: float = 0.1
    quick_seconds: float = 0.1
    last_write_seconds: float = 0.0
    work_seconds: float = 0.0

    @classmethod
    def for_file(cls, path: str | os.PathLike[str]) -> SaveSchedule:
        """A schedule whose last write is estimated from the size of the file at ``path`` (0 if there is none)."""
        try:
            size = Path(path).stat().st_size
        except OSError:
            size = 0
        return cls(last_write_seconds=size / ASSUMED_WRITE_BYTES_PER_SECOND)

    def due(self, work_seconds: float, *, what: str = "index file") -> bool:
        """Count ``work_seconds`` more of ingest; whether a write of ``what`` (named in the debug log line said
        when it is not due) is due now."""
        self.work_seconds += max(0.0, float(work_seconds))
        if self.last_write_seconds <= max(self.quick_seconds, self.share * self.work_seconds):
            return True
        logger.debug(
            "%s left for later: its last write took %.2f s, the ingest since %.2f s",
            what,
            self.last_write_seconds,
            self.work_seconds,
        )
        return False

    def wrote(self, seconds: float) -> None:
        """A write took ``seconds``: the ingest time is counted afresh from now."""
        self.last_write_seconds, self.work_seconds = float(seconds), 0.0

"""Atomic file replacement: a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

__all__ = ["TEMP_SUFFIX", "atomic_write", "atomic_write_with"]

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

"""The file framing of crossscale's derived index files: a magic, a JSON header, the data, a checksum.

::

    magic (8 bytes) | header length (u64) | header (JSON) | data (streamed) | "CSIE" length (u64) CRC-32 (u32)

The data is a faiss index (:meth:`IndexFile.write`), streamed to and from the file so that neither saving nor
loading holds a second copy of it, or numpy arrays laid end to end, their names, dtypes and shapes listed in the
header (:meth:`IndexFile.write_arrays`). A header with ``"faiss": false`` has no faiss data (an empty index). Files
written before the trailer existed end where the faiss data ends; readers accept them. Writing is atomic
(temporary file, fsync, ``os.replace``).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from crossscale._files import atomic_write_with
from crossscale.errors import WorkspaceFormatError

__all__ = ["IndexFile"]

#: after the faiss data: this, its length (u64) and CRC-32 (u32). Files written before it have none; readers that
#: predate it stop reading where faiss' data ends, so it needs no new format number.
_TRAILER = b"CSIE"
_TRAILER_STRUCT = struct.Struct("<4sQI")
_CHECK_BLOCK = 16 << 20


class _Summed:
    """The length and CRC-32 of the bytes passed through :meth:`add`."""

    def __init__(self) -> None:
        self.length = 0
        self.crc = 0

    def add(self, data: bytes) -> bytes:
        self.update(data)
        return data

    def update(self, data: bytes | memoryview) -> None:
        self.length += len(data)
        self.crc = zlib.crc32(data, self.crc)


@dataclass(frozen=True)
class IndexFile:
    """One kind of index file: its ``magic`` (8 bytes), the header ``format`` it reads and writes, ``what`` it is
    called in error messages, and whether every file of its kind has the checksum (``checksummed``: a file
    without one is refused as truncated; otherwise it is taken for a file from before checksums)."""

    magic: bytes
    format: int
    what: str
    checksummed: bool = False

    def write(self, path: str | os.PathLike[str], header: Mapping[str, Any], index: Any | None) -> None:
        """Write ``header`` (with ``format``) and the faiss ``index`` (``None``: none) to ``path`` atomically."""
        import faiss

        doc = {**header, "format": self.format, "faiss": index is not None}
        header_bytes = json.dumps(doc).encode()

        def write(f: BinaryIO) -> None:
            f.write(self.magic + struct.pack("<Q", len(header_bytes)) + header_bytes)
            summed = _Summed()
            if index is not None:

                def put(data: bytes) -> None:
                    summed.add(data)
                    f.write(data)

                faiss.write_index(index, faiss.PyCallbackIOWriter(put))  # type: ignore[attr-defined]
            f.write(_TRAILER_STRUCT.pack(_TRAILER, summed.length, summed.crc))

        atomic_write_with(path, write)

    def read(self, path: str | os.PathLike[str]) -> tuple[dict[str, Any], Any | None]:
        """The header and the faiss index (``None`` if the file holds none) of a file :meth:`write` wrote.

        Raises:
            WorkspaceFormatError: not such a file, a newer format, or corrupt.
            OSError: it cannot be read.
        """
        import faiss

        with open(path, "rb") as f:
            header = self._header(f, path)
            summed = _Summed()
            index = None
            if header.get("faiss", True):

                def get(n: int) -> bytes:
                    return summed.add(f.read(n))

                try:
                    index = faiss.read_index(faiss.PyCallbackIOReader(get))  # type: ignore[attr-defined]
                except RuntimeError as exc:
                    raise WorkspaceFormatError(f"{path}: corrupt faiss data: {exc}") from exc
            self._check_trailer(f.read(), summed, path)
        return header, index

    def write_arrays(
        self, path: str | os.PathLike[str], header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> None:
        """Write ``header`` (with ``format``) and ``arrays`` (each in C order, no objects) to ``path`` atomically;
        :meth:`read_arrays` reads them back by name."""
        contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        for name, a in contiguous.items():
            if a.dtype.hasobject:
                raise TypeError(f"array {name!r} holds Python objects")
        specs = [[name, a.dtype.str, list(a.shape)] for name, a in contiguous.items()]
        header_bytes = json.dumps({**header, "format": self.format, "faiss": False, "arrays": specs}).encode()

        def write(f: BinaryIO) -> None:
            f.write(self.magic + struct.pack("<Q", len(header_bytes)) + header_bytes)
            summed = _Summed()
            for a in contiguous.values():
                data = a.reshape(-1).view(np.uint8).data
                summed.update(data)
                f.write(data)
            f.write(_TRAILER_STRUCT.pack(_TRAILER, summed.length, summed.crc))

        atomic_write_with(path, write)

    def read_arrays(self, path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The header and the arrays, by name, of a file :meth:`write_arrays` wrote, checked against its checksum.

        Raises:
            WorkspaceFormatError: not such a file, a newer format, an array list that is not one, or corrupt.
            OSError: it cannot be read.
        """
        with open(path, "rb") as f:
            header = self._header(f, path)
            summed = _Summed()
            arrays: dict[str, np.ndarray] = {}
            for name, dtype, shape in self._array_specs(header, path):
                a = np.empty(shape, dtype)
                data = a.reshape(-1).view(np.uint8).data
                if f.readinto(data) != len(data):
                    raise WorkspaceFormatError(f"{path}: truncated (in array {name!r})")
                summed.update(data)
                arrays[name] = a
            self._check_trailer(f.read(), summed, path)
        return header, arrays

    def _array_specs(
        self, header: Mapping[str, Any], path: str | os.PathLike[str]
    ) -> list[tuple[str, np.dtype[Any], tuple[int, ...]]]:
        """``(name, dtype, shape)`` of each array the header lists. Raises WorkspaceFormatError."""
        try:
            specs = [
                (str(name), np.dtype(dtype), tuple(int(n) for n in shape)) for name, dtype, shape in header["arrays"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkspaceFormatError(f"{path}: {self.what} header lists no readable arrays: {exc!r}") from exc
        for name, dtype, shape in specs:
            if dtype.hasobject or min(shape, default=0) < 0:
                raise WorkspaceFormatError(f"{path}: array {name!r} is of an unreadable kind ({dtype}, {shape})")
        return specs

    def check(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The header of a file :meth:`write` wrote, after streaming its faiss data through the checksum in
        blocks (memory stays small whatever the index's size); ``None`` for a file from before checksums, which
        only faiss can check (load it), unless ``checksummed`` (then it is refused).

        Raises:
            WorkspaceFormatError, OSError: as :meth:`read`.
        """
        with open(path, "rb") as f:
            header = self._header(f, path)
            start = f.tell()
            size = f.seek(0, os.SEEK_END)
            if size - start < _TRAILER_STRUCT.size:
                self._no_checksum(path)
                return None
            f.seek(size - _TRAILER_STRUCT.size)
            magic, length, _ = _TRAILER_STRUCT.unpack(f.read(_TRAILER_STRUCT.size))
            if magic != _TRAILER or length != size - start - _TRAILER_STRUCT.size:
                self._no_checksum(path)
                return None
            f.seek(start)
            summed = _Summed()
            left = length
            while left:
                block = summed.add(f.read(min(left, _CHECK_BLOCK)))
                if not block:
                    raise WorkspaceFormatError(f"{path}: truncated")
                left -= len(block)
            self._check_trailer(f.read(), summed, path)
        return header

    def _header(self, f: BinaryIO, path: str | os.PathLike[str]) -> dict[str, Any]:
        """The JSON header, ``f`` left at the faiss data. Raises WorkspaceFormatError."""
        start = f.read(len(self.magic) + 8)
        if not start.startswith(self.magic) or len(start) < len(self.magic) + 8:
            raise WorkspaceFormatError(f"{path}: not a crossscale {self.what} file")
        (hlen,) = struct.unpack("<Q", start[len(self.magic) :])
        try:
            header = json.loads(f.read(hlen))
        except ValueError as exc:
            raise WorkspaceFormatError(f"{path}: corrupt header") from exc
        if not isinstance(header, dict) or header.get("format") != self.format:
            raise WorkspaceFormatError(
                f"{path}: {self.what} format {header.get('format') if isinstance(header, dict) else '?'} "
                f"is not supported (this crossscale reads format {self.format})"
            )
        return header

    def _no_checksum(self, path: str | os.PathLike[str]) -> None:
        """A file without the trailer: one from before checksums, or (``checksummed``) a truncated one."""
        if self.checksummed:
            raise WorkspaceFormatError(f"{path}: truncated (no checksum)")

    def _check_trailer(self, rest: bytes, summed: _Summed, path: str | os.PathLike[str]) -> None:
        """``rest`` (the bytes after the data) must be empty (a file from before checksums, unless
        ``checksummed``) or a trailer that matches what was read. Raises WorkspaceFormatError."""
        if not rest:
            self._no_checksum(path)
            return
        if len(rest) != _TRAILER_STRUCT.size or rest[:4] != _TRAILER:
            raise WorkspaceFormatError(f"{path}: {len(rest)} unexpected bytes after the data")
        _, length, crc = _TRAILER_STRUCT.unpack(rest)
        if (length, crc) != (summed.length, summed.crc):
            raise WorkspaceFormatError(f"{path}: the {self.what} data fails its checksum (the file is corrupt)")

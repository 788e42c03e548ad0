"""LMDB store of parents: original image bytes, metadata, chunk records and chunk vectors.

This is the workspace's source of truth. Every write is one LMDB transaction,
so a parent is stored with all its chunks and vectors, or not at all. Each
write also appends to a change log keyed by a generation number, from which a
derived index (FAISS) can catch up after a crash. Values are JSON, raw
vectors, or a parent's chunk details packed as arrays; never pickle. The
memory map grows on demand instead of failing with ``MapFullError``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import struct
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import lmdb
import numpy as np

from crossscale._checks import positive_int
from crossscale.errors import (
    ConfigurationError,
    ParentNotFoundError,
    WorkspaceError,
    WorkspaceFormatError,
    WorkspaceMismatchError,
)
from crossscale.types import CHUNK_KINDS, MAX_COORDINATE, Chunk, ChunkDetails, ChunkRecord

logger = logging.getLogger(__name__)

__all__ = ["VECTOR_DTYPES", "ChunkRecord", "NewParent", "ParentRecord", "RootStore", "validate_parent_id"]

_U64 = struct.Struct(">Q")
_MAX_ID_BYTES = 256
_INITIAL_MAP = 64 << 20
#: how a store may keep its vectors (little-endian)
VECTOR_DTYPES = {"float32": "<f4", "float16": "<f2"}
T = TypeVar("T")


class _MapGate:
    """Lets one thread grow an environment's memory map while no other thread of this process reads it.

    LMDB remaps on ``set_mapsize``; a read transaction another thread holds meanwhile would point into the old
    mapping. Readers register for the life of their transaction; a resize waits until every *other* thread's
    readers are done (a thread's own reader cannot be waited for; LMDB lets it be, as before), and new readers
    wait while it runs. Ingest reads the store from its preparing thread while the writer grows the map.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers: dict[int, int] = {}
        self._resizing = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._readers[me] -= 1
                if not self._readers[me]:
                    del self._readers[me]
                self._cond.notify_all()

    @contextlib.contextmanager
    def resizing(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            while self._resizing or any(thread != me for thread in self._readers):
                self._cond.wait()
            self._resizing = True
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class _SharedEnvironments:
    """One LMDB environment per path and process, reference-counted.

    LMDB allows a single environment handle per file and process (py-lmdb
    refuses a second), so a reader and a writer of one workspace in the same
    process share it. It is opened writable unless the file system forbids it;
    read-only is enforced by :class:`RootStore`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._envs: dict[str, lmdb.Environment] = {}
        self._gates: dict[str, _MapGate] = {}
        self._users: dict[str, int] = {}

    def gate(self, path: Path) -> _MapGate:
        """The resize gate of the environment of ``path`` (acquired)."""
        with self._lock:
            return self._gates[os.path.realpath(path)]

    def acquire(self, path: Path, map_size: int, max_dbs: int) -> lmdb.Environment:
        key = os.path.realpath(path)
        with self._lock:
            if key in self._envs:
                self._users[key] += 1
                return self._envs[key]
            writable = os.access(key, os.W_OK)
            env: lmdb.Environment = lmdb.open(
                key,
                max_dbs=max_dbs,
                map_size=map_size,
                readonly=not writable,
                subdir=True,
                metasync=True,
                sync=True,
                readahead=False,
                max_readers=256,
            )
            self._envs[key] = env
            self._gates[key] = _MapGate()
            self._users[key] = 1
            return env

    def release(self, path: Path) -> None:
        key = os.path.realpath(path)
        with self._lock:
            if key not in self._envs:
                return
            self._users[key] -= 1
            if self._users[key] == 0:
                self._envs.pop(key).close()
                del self._users[key], self._gates[key]


_ENVS = _SharedEnvironments()


def validate_parent_id(parent_id: object) -> str:
    """Check a user-supplied parent id: a non-empty str of printable characters, <= 256 UTF-8 bytes."""
    if not isinstance(parent_id, str) or not parent_id:
        raise ConfigurationError(f"parent id must be a non-empty str, got {parent_id!r}")
    if len(parent_id.encode("utf-8")) > _MAX_ID_BYTES:
        raise ConfigurationError(f"parent id is longer than {_MAX_ID_BYTES} UTF-8 bytes: {parent_id[:40]!r}...")
    if not parent_id.isprintable():
        raise ConfigurationError(f"parent id contains control characters: {parent_id!r}")
    return parent_id


@dataclass(frozen=True, slots=True)
class ParentRecord:
    """What the store keeps of one parent image, besides its bytes."""

    parent_id: str
    width: int
    height: int
    format: str
    nbytes: int
    chunk_ids: tuple[int, ...]
    source: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "w": self.width,
                "h": self.height,
                "f": self.format,
                "n": self.nbytes,
                "c": list(self.chunk_ids),
                "s": self.source,
                "m": dict(self.metadata),
            }
        ).encode()

    @classmethod
    def from_json(cls, parent_id: str, raw: bytes) -> ParentRecord:
        d = json.loads(raw)
        return cls(parent_id, d["w"], d["h"], d["f"], d["n"], tuple(d["c"]), d.get("s"), d.get("m") or {})


@dataclass(frozen=True)
class NewParent:
    """A parent to add: its bytes, what to record, its chunks and one vector per chunk.

    Of each :class:`~crossscale.types.Chunk` the store keeps the box, kind, label and confidence (not the
    crop); chunk ids are assigned by the store. ``local``: what a verifier extracted from the image, if any.
    """

    parent_id: str
    data: bytes
    format: str
    width: int
    height: int
    chunks: Sequence[Chunk]
    vectors: np.ndarray
    source: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    local: bytes | None = None

    def __post_init__(self) -> None:
        if any(isinstance(c, tuple) for c in self.chunks):
            warnings.warn(
                "NewParent chunks as (box, kind, label, confidence) tuples are deprecated; pass Chunk objects "
                "(Chunk(box, None, kind, label, confidence))",
                DeprecationWarning,
                stacklevel=3,
            )
            chunks = [Chunk(c[0], None, *c[1:]) if isinstance(c, tuple) else c for c in self.chunks]
            object.__setattr__(self, "chunks", chunks)

    @functools.cached_property
    def details(self) -> ChunkDetails:
        """The chunks' boxes, kinds and labels as columns: worked out once, for the store and the parent map."""
        return ChunkDetails.of(self.chunks)


class RootStore:
    """The LMDB database under ``path`` (a directory).

    Args:
        path: directory of the LMDB environment; created if missing (unless ``readonly``).
        dim: vector length, fixed at creation; checked on every write.
        readonly: open for reading only (many processes may read while one writes).
        map_size: initial memory map size in bytes; it doubles whenever a write needs more.
        vector_dtype: how vectors are kept: ``"float32"`` (4 bytes per value) or ``"float16"`` (2; cosine scores
            move by ~1e-3). Recorded in the store when it is created; ``None`` reads what is recorded (a store
            written before this option is ``"float32"``). Vectors always come back as float32.

    Raises:
        WorkspaceMismatchError: ``vector_dtype`` differs from the one the store was created with.
    """

    _DBS = ("roots", "parents", "chunks", "vectors", "info", "log", "local", "details")
    #: tables a store written by an earlier crossscale may lack; a reader sees them as empty.
    _OPTIONAL = frozenset({"local", "details"})

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dim: int,
        readonly: bool = False,
        map_size: int = _INITIAL_MAP,
        vector_dtype: str | None = None,
    ) -> None:
        self.dim = positive_int("dim", dim)
        if vector_dtype is not None and vector_dtype not in VECTOR_DTYPES:
            raise ConfigurationError(f"vector_dtype must be one of {sorted(VECTOR_DTYPES)}, got {vector_dtype!r}")
        self.path = Path(path)
        self.readonly = readonly
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not (self.path / "data.mdb").exists():
            raise WorkspaceError(f"{self.path}: no store to open read-only")
        try:
            self._env = _ENVS.acquire(self.path, max(map_size, _INITIAL_MAP), len(self._DBS))
            self._gate = _ENVS.gate(self.path)
            self._db = {name: self._open_db(name, readonly) for name in self._DBS}
        except lmdb.Error as exc:
            _ENVS.release(self.path)
            raise WorkspaceError(f"{self.path}: cannot open LMDB store: {exc}") from exc
        self._closed = False
        try:
            self.vector_dtype = self._settle_dtype(vector_dtype)
        except BaseException:
            self.close()
            raise
        self._dtype = np.dtype(VECTOR_DTYPES[self.vector_dtype])

    def as_stored(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` as they will read back (rounded to float16 where the store keeps that), as float32."""
        return np.asarray(vectors, dtype=self._dtype).astype(np.float32, copy=False)

    def _settle_dtype(self, asked: str | None) -> str:
        recorded = self.get_info("vector_dtype")
        if recorded is None:
            if asked is None or asked == "float32" or self.readonly:
                return "float32"  # what every store was before the option existed
            if self.chunk_count():
                raise WorkspaceMismatchError(f"{self.path}: its vectors are float32; they cannot be read as {asked}")
            self.set_info("vector_dtype", asked)
            return asked
        if recorded not in VECTOR_DTYPES:
            raise WorkspaceFormatError(f"{self.path}: unknown vector_dtype {recorded!r}")
        if asked is not None and asked != recorded:
            raise WorkspaceMismatchError(f"{self.path}: its vectors are {recorded}; they cannot be read as {asked}")
        return str(recorded)

    def _open_db(self, name: str, readonly: bool) -> Any:
        try:
            return self._env.open_db(name.encode(), create=not readonly)
        except lmdb.NotFoundError:
            if name not in self._OPTIONAL:
                raise
            return None  # a table this store was written without: read as empty

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release the environment (closed when its last user in the process closes). Idempotent."""
        if not self._closed:
            self._closed = True
            _ENVS.release(self.path)

    def __enter__(self) -> RootStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one write transaction, growing the map and retrying on MapFullError."""
        if self.readonly:
            raise WorkspaceError(f"{self.path}: store is open read-only")
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                size = self._env.info()["map_size"] * 2
                logger.info("LMDB map full; growing to %d MiB", size >> 20)
                with self._gate.resizing():
                    self._env.set_mapsize(size)
            except lmdb.MapResizedError:  # grown by another process since we opened it
                with self._gate.resizing():
                    self._env.set_mapsize(0)
            except lmdb.Error as exc:
                raise WorkspaceError(
                    f"{self.path}: write failed, nothing was committed: {exc} ({self._space_hint()})"
                ) from exc

    def _space_hint(self) -> str:
        """What the machine says about room to write: LMDB reports a full disk as a bare I/O error."""
        import resource
        import shutil

        parts = []
        with contextlib.suppress(OSError):
            parts.append(f"{shutil.disk_usage(self.path).free >> 20} MiB free on the disk")
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            parts.append(f"this process may not grow a file past {soft >> 20} MiB (RLIMIT_FSIZE)")
        with contextlib.suppress(OSError):
            parts.append(f"store file is {self.disk_bytes() >> 20} MiB")
        return "; ".join(parts) + "; a full disk shows as an I/O error"

    # ------------------------------------------------------------------ reading
    @contextlib.contextmanager
    def snapshot(self) -> Iterator[lmdb.Transaction]:
        """A read transaction: a consistent view of the whole store, however the writer moves on.

        Pass it as ``txn=`` to the read methods to see them all at one point in time.
        """
        while True:
            with self._gate.reading():
                try:
                    txn = self._env.begin()
                except lmdb.MapResizedError:  # another process grew the map: adopt its size, then begin again
                    txn = None
                if txn is not None:
                    with txn:
                        yield txn
                    return
            with self._gate.resizing():  # not as a reader: two threads adopting at once must not wait on each other
                self._env.set_mapsize(0)

    def _view(self, txn: lmdb.Transaction | None) -> contextlib.AbstractContextManager[lmdb.Transaction]:
        return contextlib.nullcontext(txn) if txn is not None else self.snapshot()

    # ------------------------------------------------------------------ info
    def get_info(self, key: str, default: Any = None, *, txn: lmdb.Transaction | None = None) -> Any:
        """A JSON value from the info table."""
        with self._view(txn) as t:
            raw = t.get(key.encode(), db=self._db["info"])
        return default if raw is None else json.loads(bytes(raw))

    def set_info(self, key: str, value: Any) -> None:
        """Store a JSON value in the info table."""
        self._write(lambda txn: txn.put(key.encode(), json.dumps(value).encode(), db=self._db["info"]))

    @property
    def generation(self) -> int:
        """Number of committed parent writes (adds and deletes) so far."""
        return self.generation_at()

    def generation_at(self, txn: lmdb.Transaction | None = None) -> int:
        """:attr:`generation`, as seen by ``txn``."""
        return int(self.get_info("generation", 0, txn=txn))

    def _bump(self, txn: lmdb.Transaction, added: Sequence[int], removed: Sequence[int]) -> int:
        raw = txn.get(b"generation", db=self._db["info"])
        gen = (int(json.loads(bytes(raw))) if raw else 0) + 1
        txn.put(b"generation", str(gen).encode(), db=self._db["info"])
        entry = json.dumps({"add": list(added), "remove": list(removed)}).encode()
        txn.put(_U64.pack(gen), entry, db=self._db["log"])
        return gen

    # ------------------------------------------------------------------ parents
    def __len__(self) -> int:
        return self.parent_count()

    def parent_count(self, txn: lmdb.Transaction | None = None) -> int:
        """Number of stored parents."""
        with self._view(txn) as t:
            return int(t.stat(self._db["parents"])["entries"])

    def __contains__(self, parent_id: object) -> bool:
        if not isinstance(parent_id, str) or not parent_id:
            return False
        with self.snapshot() as txn:
            return txn.get(parent_id.encode(), db=self._db["parents"]) is not None

    def chunk_count(self, txn: lmdb.Transaction | None = None) -> int:
        """Number of stored chunks."""
        with self._view(txn) as t:
            return int(t.stat(self._db["chunks"])["entries"])

    def parent_ids(self) -> Iterator[str]:
        """All parent ids, in byte order of their UTF-8 encoding."""
        with self.snapshot() as txn:
            for key in txn.cursor(db=self._db["parents"]).iternext(keys=True, values=False):
                yield bytes(key).decode()

    def parent_chunks(self, txn: lmdb.Transaction | None = None) -> Iterator[tuple[str, list[int]]]:
        """``(parent_id, chunk_ids)`` of every parent (what a :class:`~crossscale.index.ParentMap` is built of); a
        parent whose record is unreadable is left out, with a warning (:meth:`check` reports it)."""
        with self._view(txn) as t:
            for key, raw in t.cursor(db=self._db["parents"]):
                parent_id = bytes(key).decode()
                try:
                    chunk_ids = _chunk_ids(json.loads(bytes(raw).decode())["c"])
                except (ValueError, KeyError, TypeError) as exc:  # check() reports it
                    logger.warning("parent %r: unreadable record (%s); left out", parent_id, exc)
                    continue
                yield parent_id, chunk_ids

    def parent_details(self, txn: lmdb.Transaction | None = None) -> Iterator[tuple[str, list[int], ChunkDetails]]:
        """``(parent_id, chunk_ids, details of those chunks in that order)`` of every parent: what a
        :class:`~crossscale.index.ParentMap` that also knows boxes is built of.

        Each parent's details are one read; a parent stored by a crossscale that kept none (0.1, early 0.2) gets them
        from its chunk records (one read per chunk), and one whose records are unreadable gets unknown details. A
        parent whose own record is unreadable is left out, with a warning (:meth:`check` reports it).
        """
        with self._view(txn) as t:
            table = self._db["details"]
            rebuilt = 0
            for parent_id, chunk_ids in self.parent_chunks(t):  # an unreadable record left out there
                value = None if table is None else t.get(parent_id.encode(), db=table)
                details = None
                if value is not None:
                    try:
                        details = ChunkDetails.from_bytes(bytes(value))
                    except ValueError as exc:
                        logger.warning("parent %r: unreadable chunk details (%s); reading its records", parent_id, exc)
                    if details is not None and len(details) != len(chunk_ids):
                        logger.warning("parent %r: chunk details of another length; reading its records", parent_id)
                        details = None
                if details is None:
                    rebuilt += 1
                    details = self._details_from_records(chunk_ids, t)
                yield parent_id, chunk_ids, details
            if rebuilt:
                logger.info("%d parent(s) have no stored chunk details; read them from their chunk records", rebuilt)

    def _details_from_records(self, chunk_ids: Sequence[int], txn: lmdb.Transaction) -> ChunkDetails:
        """The details of these chunks read from their records; unknown if any is missing or unreadable (searches
        then read the records themselves, and ``check`` reports them)."""
        try:
            records = self.chunk_records(chunk_ids, txn=txn)
            if len(records) == len(chunk_ids):
                return ChunkDetails.of([records[int(cid)] for cid in chunk_ids])
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("chunk records of %d chunk(s) are unreadable (%s)", len(chunk_ids), exc)
        return ChunkDetails.unknown(len(chunk_ids))

    def parent(self, parent_id: str, *, txn: lmdb.Transaction | None = None) -> ParentRecord:
        """The record of ``parent_id``. Raises :class:`ParentNotFoundError`."""
        with self._view(txn) as t:
            raw = t.get(parent_id.encode(), db=self._db["parents"])
        if raw is None:
            raise ParentNotFoundError(parent_id)
        return ParentRecord.from_json(parent_id, bytes(raw))

    def image_bytes(self, parent_id: str, *, txn: lmdb.Transaction | None = None) -> bytes:
        """The stored (encoded) image of ``parent_id``. Raises :class:`ParentNotFoundError`."""
        with self._view(txn) as t:
            raw = t.get(parent_id.encode(), db=self._db["roots"])
        if raw is None:
            raise ParentNotFoundError(parent_id)
        return bytes(raw)

    def add_parents(self, parents: Sequence[NewParent]) -> list[list[int]]:
        """Store parents in one transaction; returns the chunk ids assigned to each.

        All or nothing: on any error nothing of the batch is stored.

        Raises:
            ConfigurationError: a parent id is invalid or already stored, or vectors do not match its chunks.
            WorkspaceError: the write failed (e.g. disk full); nothing was committed.
        """
        for p in parents:
            validate_parent_id(p.parent_id)
            vec = np.asarray(p.vectors)
            if vec.shape != (len(p.chunks), self.dim) or vec.dtype != np.float32:
                raise ConfigurationError(
                    f"parent {p.parent_id!r}: vectors must be float32 of shape ({len(p.chunks)}, {self.dim}), "
                    f"got {vec.dtype} {vec.shape}"
                )
            if p.local is not None and not isinstance(p.local, bytes):
                raise ConfigurationError(f"parent {p.parent_id!r}: local features must be bytes, got {p.local!r:.40}")
            for chunk in p.chunks:
                if not isinstance(chunk, Chunk):
                    raise ConfigurationError(f"parent {p.parent_id!r}: chunks must be Chunk objects, got {chunk!r}")
        if len({p.parent_id for p in parents}) != len(parents):
            raise ConfigurationError("the same parent id appears twice in one batch")

        def write(txn: lmdb.Transaction) -> list[list[int]]:
            raw = txn.get(b"next_chunk_id", db=self._db["info"])
            next_id = int(json.loads(bytes(raw))) if raw else 0
            assigned: list[list[int]] = []
            for p in parents:
                key = p.parent_id.encode()
                if txn.get(key, db=self._db["parents"]) is not None:
                    raise ConfigurationError(f"parent {p.parent_id!r} is already stored")
                ids = list(range(next_id, next_id + len(p.chunks)))
                next_id += len(p.chunks)
                vectors = np.ascontiguousarray(p.vectors, dtype=self._dtype)
                for cid, chunk, vec in zip(ids, p.chunks, vectors, strict=True):
                    record = ChunkRecord(cid, p.parent_id, chunk.box, chunk.kind, chunk.label, chunk.confidence)
                    txn.put(_U64.pack(cid), record.to_json(), db=self._db["chunks"])
                    txn.put(_U64.pack(cid), vec.tobytes(), db=self._db["vectors"])
                record_p = ParentRecord(
                    p.parent_id, p.width, p.height, p.format, len(p.data), tuple(ids), p.source, dict(p.metadata)
                )
                txn.put(key, record_p.to_json(), db=self._db["parents"])
                txn.put(key, p.details.to_bytes(), db=self._db["details"])
                txn.put(key, p.data, db=self._db["roots"])
                if p.local is not None:
                    txn.put(key, p.local, db=self._db["local"])
                assigned.append(ids)
            txn.put(b"next_chunk_id", str(next_id).encode(), db=self._db["info"])
            self._bump(txn, [i for ids in assigned for i in ids], [])
            return assigned

        return self._write(write)

    def delete_parent(self, parent_id: str) -> list[int]:
        """Delete a parent with its bytes, chunk records and vectors; returns the removed chunk ids.

        Raises:
            ParentNotFoundError: no such parent.
        """

        def write(txn: lmdb.Transaction) -> list[int]:
            ids = self._delete_in(txn, parent_id)
            if ids is None:
                raise ParentNotFoundError(parent_id)
            self._bump(txn, [], ids)
            return ids

        if not isinstance(parent_id, str):
            raise ParentNotFoundError(str(parent_id))
        return self._write(write)

    def delete_parents(self, parent_ids: Iterable[str]) -> tuple[list[str], list[int]]:
        """Delete those of ``parent_ids`` that are stored, each with its bytes, chunk records and vectors, in one
        transaction (one commit and one log entry for all of them); returns the ids deleted (each once, in the
        order given) and their removed chunk ids. Ids not stored, and anything but a non-empty string, are left
        out."""
        wanted = list(dict.fromkeys(p for p in parent_ids if isinstance(p, str) and p))

        def write(txn: lmdb.Transaction) -> tuple[list[str], list[int]]:
            deleted: list[str] = []
            removed: list[int] = []
            for parent_id in wanted:
                ids = self._delete_in(txn, parent_id)
                if ids is not None:
                    deleted.append(parent_id)
                    removed += ids
            if deleted:
                self._bump(txn, [], removed)
            return deleted, removed

        return self._write(write) if wanted else ([], [])

    def _delete_in(self, txn: lmdb.Transaction, parent_id: str) -> list[int] | None:
        """Delete ``parent_id`` and all it has within ``txn``; its chunk ids, or ``None`` if it is not stored.

        Raises:
            WorkspaceError: its record is unreadable (the transaction is then abandoned: nothing is deleted).
        """
        key = parent_id.encode()
        raw = txn.get(key, db=self._db["parents"])
        if raw is None:
            return None
        try:
            ids = _chunk_ids(ParentRecord.from_json(parent_id, bytes(raw)).chunk_ids)
        except (ValueError, KeyError, TypeError) as exc:  # its chunks are unknown: nothing can be deleted safely
            raise WorkspaceError(
                f"{self.path}: parent {parent_id!r} has an unreadable record ({exc}); nothing was deleted "
                "(`crossscale verify` reports it)"
            ) from exc
        for cid in ids:
            txn.delete(_U64.pack(cid), db=self._db["chunks"])
            txn.delete(_U64.pack(cid), db=self._db["vectors"])
        for table in ("parents", "roots", "local", "details"):
            txn.delete(key, db=self._db[table])
        return ids

    def local_features(self, parent_id: str, *, txn: lmdb.Transaction | None = None) -> bytes | None:
        """What a verifier extracted from ``parent_id`` when it was indexed, or ``None``."""
        if self._db["local"] is None:
            return None
        with self._view(txn) as t:
            raw = t.get(parent_id.encode(), db=self._db["local"])
        return None if raw is None else bytes(raw)

    def local_count(self, txn: lmdb.Transaction | None = None) -> int:
        """How many parents have local features stored."""
        if self._db["local"] is None:
            return 0
        with self._view(txn) as t:
            return int(t.stat(self._db["local"])["entries"])

    # ------------------------------------------------------------------ chunks and vectors
    def chunk_records(self, chunk_ids: Iterable[int], *, txn: lmdb.Transaction | None = None) -> dict[int, ChunkRecord]:
        """Records of the given chunk ids; ids not stored are left out."""
        out: dict[int, ChunkRecord] = {}
        with self._view(txn) as txn:
            for cid in chunk_ids:
                raw = txn.get(_U64.pack(int(cid)), db=self._db["chunks"])
                if raw is not None:
                    out[int(cid)] = ChunkRecord.from_json(int(cid), bytes(raw))
        return out

    def vectors(
        self, chunk_ids: Sequence[int] | np.ndarray, *, txn: lmdb.Transaction | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of the given chunk ids that are stored, in the order given, an id asked twice read
        twice (in one LMDB call: the query path re-scores thousands of hits at a time with them)."""
        wanted = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        wanted = wanted[wanted >= 0]
        keys = wanted.astype(">u8").view("V8").tolist()  # the keys' layout (_U64), as 8-byte `bytes` each
        with self._view(txn) as txn:
            pairs = txn.cursor(db=self._db["vectors"]).getmulti(keys)
            values = b"".join(list(map(itemgetter(1), pairs)))  # copied while valid
            every = len(pairs) == len(wanted)  # all found: the ids are the ones asked for
            found = b"" if every else b"".join(list(map(itemgetter(0), pairs)))
        ids = wanted if every else np.frombuffer(found, dtype=">u8").astype(np.int64)
        return ids, self._as_float32(values, len(ids))

    def _as_float32(self, values: bytes, rows: int) -> np.ndarray:
        """``rows`` stored vectors, joined in ``values``, as a ``(rows, dim)`` float32 array. float16 ones are
        widened by faiss' fp16 decoder: the same bits as numpy's ``astype`` (every finite float16 checked), in
        two thirds of its time on this machine's CPUs (numpy's conversion does not use the F16C instructions)."""
        if self.vector_dtype != "float16" or not rows:
            return np.frombuffer(values, dtype=self._dtype).reshape(rows, self.dim).astype(np.float32)
        codes = np.frombuffer(values, dtype=np.uint8).reshape(rows, 2 * self.dim)
        out: np.ndarray = self._fp16_decoder.decode(codes)
        return out

    @functools.cached_property
    def _fp16_decoder(self) -> Any:
        """faiss' float16 scalar quantizer for this store's dimension, made on first use (faiss is imported
        only then)."""
        import faiss

        return faiss.ScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16)

    def chunk_ids(self, txn: lmdb.Transaction | None = None) -> set[int]:
        """Ids of all stored chunk vectors (keys only; no vector is read). :meth:`vector_ids` is the compact form."""
        return {int(i) for i in self.vector_ids(txn)}

    def vector_ids(self, txn: lmdb.Transaction | None = None) -> np.ndarray:
        """Ids of all stored chunk vectors, sorted (int64; keys only, 8 bytes each: 80 MB at 10M chunks)."""
        with self._view(txn) as t:
            return _keyed_ids(t, self._db["vectors"])

    def iter_vectors(
        self, batch_size: int = 65536, *, txn: lmdb.Transaction | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All stored ``(ids, vectors)`` in chunk-id order, in batches (for rebuilding an index). Each batch's
        keys and values are joined and decoded at once: half the time of a row at a time (1.4 vs 2.7-3.0 us per
        vector on a 10M store), which a migration pays twice (its training sample, then every vector)."""
        with self._view(txn) as txn:
            pairs = txn.cursor(db=self._db["vectors"]).iternext(keys=True, values=True)
            while batch := list(itertools.islice(pairs, batch_size)):
                ids = np.frombuffer(b"".join(key for key, _ in batch), dtype=">u8").astype(np.int64)  # _U64 keys
                yield ids, self._as_float32(b"".join(value for _, value in batch), len(batch))

    def preload(self, *, progress: bool = False) -> int:
        """Read the store's data file once, start to end, so that the OS's page cache holds it, and return the
        bytes read.

        The store is read through a memory map, so a page not in the page cache is read from disk when a search
        first needs it: after a fresh boot, or when other files pushed the store out, the first searches that
        re-score hits (and reads of records and images) wait on the disk. On the 10M-region benchmark one query
        took 16-19 ms p50 from a cold store and 6.9-9.2 ms after this, which read its 7.9 GiB in 11-23 s
        (docs/benchmarks.md). The whole file is read, images included, with plain reads rather than through the
        map, so the pages stay the OS's: they are not counted in this process's memory, and the OS may drop them
        again under memory pressure. Other processes that open the store find them too.

        Args:
            progress: show a progress bar (bytes).

        Raises:
            WorkspaceError: the file cannot be read, or the store is closed.
        """
        if self._closed:
            raise WorkspaceError(f"{self.path}: the store is closed")
        path = self.path / "data.mdb"
        info = self._env.info()
        used = (int(info["last_pgno"]) + 1) * int(self._env.stat()["psize"])  # pages past it hold nothing
        from tqdm.auto import tqdm

        done = 0
        block = bytearray(16 << 20)
        try:
            with (
                open(path, "rb", buffering=0) as file,
                tqdm(
                    total=used, unit="B", unit_scale=True, unit_divisor=1024, desc="preloading", disable=not progress
                ) as bar,
            ):
                while done < used and (got := file.readinto(block)):
                    got = min(got, used - done)
                    done += got
                    bar.update(got)
        except OSError as exc:
            raise WorkspaceError(f"{path}: cannot read the store: {exc}") from exc
        logger.info("preloaded %d bytes of %s", done, path)
        return done

    # ------------------------------------------------------------------ change log
    def changes_since(
        self, generation: int, *, txn: lmdb.Transaction | None = None
    ) -> list[tuple[int, list[int], list[int]]] | None:
        """Log entries ``(generation, added_ids, removed_ids)`` after ``generation``, oldest first.

        Returns ``None`` when the log no longer reaches back that far (pruned).
        """
        out: list[tuple[int, list[int], list[int]]] = []
        with self._view(txn) as t:
            current = self.generation_at(t)
            cursor = t.cursor(db=self._db["log"])
            if cursor.set_range(_U64.pack(generation + 1)):
                for key, raw in cursor:
                    entry = json.loads(bytes(raw))
                    out.append((_U64.unpack(bytes(key))[0], entry["add"], entry["remove"]))
        out = [entry for entry in out if entry[0] <= current]
        if [g for g, _, _ in out] != list(range(generation + 1, current + 1)):
            return None
        return out

    def prune_log(self, upto: int) -> None:
        """Drop log entries with generation <= ``upto`` (the derived index has them)."""

        def write(txn: lmdb.Transaction) -> None:
            cursor = txn.cursor(db=self._db["log"])
            while cursor.first() and _U64.unpack(bytes(cursor.key()))[0] <= upto:
                cursor.delete()

        self._write(write)

    def check(self, txn: lmdb.Transaction | None = None) -> list[str]:
        """Check every invariant of the store; returns the problems found (empty: consistent).

        Every parent has its bytes and all its chunks (record and vector, pointing back to it) and chunk details
        that agree with its records; every chunk, vector, image and details entry belongs to a parent; vectors are
        finite, unit-length and of the store's dimension; chunk ids are below the id counter; every value parses.

        One walk over the parents, each one's chunks read beside it, so memory does not grow with the store (at
        10M chunks, holding every record took gigabytes). Only when the counts show chunk records or vectors that
        no parent accounts for are all their keys read again, to name them.
        """
        problems: list[str] = []
        with self._view(txn) as t:
            walk = _CheckWalk()
            for key, raw in t.cursor(db=self._db["parents"]):
                problems += self._check_parent(t, bytes(key), bytes(raw), walk)
            problems += self._check_unaccounted(t, walk)
            for table, what in (("roots", "image bytes"), ("local", "local features"), ("details", "chunk details")):
                if self._db[table] is not None:
                    for key in t.cursor(db=self._db[table]).iternext(keys=True, values=False):
                        if t.get(bytes(key), db=self._db["parents"]) is None:
                            problems.append(f"{what} of {bytes(key).decode()!r} have no parent record")
            next_id = int(self.get_info("next_chunk_id", 0, txn=t))
            last = max(_last_id(t, self._db["chunks"]), _last_id(t, self._db["vectors"]))
            if last >= next_id:
                problems.append(f"chunk id {last} is not below the id counter {next_id}")
        return problems

    def _check_parent(self, t: lmdb.Transaction, key: bytes, raw: bytes, walk: _CheckWalk) -> list[str]:
        """Problems of one parent: its record, image bytes, chunk records, vectors and chunk details."""
        pid = key.decode()
        try:
            record = ParentRecord.from_json(pid, raw)
        except (ValueError, KeyError, TypeError) as exc:
            return [f"parent {pid!r}: unreadable record ({exc})"]
        try:
            _chunk_ids(record.chunk_ids)
        except ValueError as exc:
            return [f"parent {pid!r}: unreadable record ({exc})"]
        problems: list[str] = []
        if t.get(key, db=self._db["roots"]) is None:
            problems.append(f"parent {pid!r}: image bytes missing")
        if not record.chunk_ids:
            problems.append(f"parent {pid!r}: has no chunks (unsearchable)")
        together = self._check_chunks_together(t, key, pid, record.chunk_ids, walk)
        if together is not None:
            return problems + together
        chunks: list[ChunkRecord | None] = []
        rows: list[bytes] = []
        row_ids: list[int] = []
        for cid in record.chunk_ids:
            ckey = _U64.pack(cid)
            value = t.get(ckey, db=self._db["chunks"])
            chunk = None
            if value is None:
                walk.missing.append(cid)
                chunks.append(None)
                continue
            try:
                chunk = ChunkRecord.from_json(cid, bytes(value), validate=True)
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"chunk {cid}: unreadable record ({exc})")
            chunks.append(chunk)
            if chunk is not None and chunk.parent_id != pid:
                problems.append(f"chunk {cid}: listed by parent {pid!r}, but its record names {chunk.parent_id!r}")
                continue  # accounted for by the parent it names, if that one lists it
            walk.records += 1
            vec = t.get(ckey, db=self._db["vectors"])
            if vec is None:
                walk.without_vector += 1
            else:
                walk.vectors += 1
                rows.append(bytes(vec))
                row_ids.append(cid)
        problems += self._check_vectors(rows, row_ids)
        records = [c for c in chunks if c is not None]
        expected = None  # missing or unreadable records are reported already; the details' own readability is checked
        if len(records) == len(chunks):
            of = ChunkDetails.of(records)
            expected = _Expected(of.boxes, of.kinds, [r.label for r in records])
        problems += self._check_details(t, key, pid, expected)
        return problems

    def _check_chunks_together(
        self, t: lmdb.Transaction, key: bytes, pid: str, chunk_ids: Sequence[int], walk: _CheckWalk
    ) -> list[str] | None:
        """:meth:`_check_parent`'s checks of one parent's chunks, for the common case, a chunk at a time only
        where numpy cannot take them all: every record is there, they parse as one JSON array, each names the
        parent and holds a box of four ints and a known kind. Then each table is read in one lookup, the boxes are
        checked and the details compared as arrays: half the time a chunk of the walk a record at a time (a
        10M-chunk ``verify()`` took 86-90 s against 157-166 s). ``None``, with ``walk`` untouched, where any of it
        fails: the walk a record at a time then finds and names what is wrong, as it did before."""
        if not chunk_ids:
            return None
        keys = [_U64.pack(cid) for cid in chunk_ids]
        found = t.cursor(db=self._db["chunks"]).getmulti(keys)  # in the order asked; missing ones left out
        if len(found) != len(keys):
            return None
        try:
            parsed = json.loads((b"[" + b",".join(bytes(raw) for _, raw in found) + b"]").decode())  # strict UTF-8
            if len(parsed) != len(keys) or not all(d["p"] == pid for d in parsed):
                return None
            boxes = np.array([d["b"] for d in parsed])
            kinds = [d["k"] for d in parsed]
            labels = [d.get("l") for d in parsed]
        except (ValueError, KeyError, TypeError, AttributeError):  # unreadable, a record not an object, ragged boxes
            return None
        if boxes.dtype.kind != "i" or boxes.shape != (len(keys), 4):
            return None  # floats, strings, huge or nested values: Box.from_json decides on them
        if not (bool((boxes[:, :2] >= 0).all()) and bool((boxes[:, 2:] > boxes[:, :2]).all())):
            return None
        if int(boxes.max()) > MAX_COORDINATE:
            return None
        if not all(kind in CHUNK_KINDS for kind in kinds):
            return None
        expected = _Expected(boxes.astype(np.int64), np.array([CHUNK_KINDS.index(k) for k in kinds], np.uint8), labels)
        vectors = t.cursor(db=self._db["vectors"]).getmulti(keys)
        walk.records += len(keys)
        walk.vectors += len(vectors)
        walk.without_vector += len(keys) - len(vectors)
        ids = [_U64.unpack(bytes(k))[0] for k, _ in vectors]
        problems = self._check_vectors([bytes(raw) for _, raw in vectors], ids)
        return problems + self._check_details(t, key, pid, expected)

    def _check_vectors(self, rows: Sequence[bytes], ids: Sequence[int]) -> list[str]:
        """Stored vectors that are not finite unit vectors of the store's dimension (checked together)."""
        size = self.dim * np.dtype(self._dtype).itemsize
        bad = [cid for raw, cid in zip(rows, ids, strict=True) if len(raw) != size]
        good = [(raw, cid) for raw, cid in zip(rows, ids, strict=True) if len(raw) == size]
        if good:
            vecs = np.frombuffer(b"".join(raw for raw, _ in good), dtype=self._dtype).reshape(len(good), self.dim)
            vecs = vecs.astype(np.float32, copy=False)  # squares of unit rows summed: ~1e-7 off, the tolerance 1e-3
            tolerance = 1e-3 if self.vector_dtype == "float32" else 4e-3  # float16: 2^-11 per value
            with np.errstate(invalid="ignore", over="ignore"):
                ok = np.isfinite(vecs).all(axis=1) & (np.abs(np.einsum("ij,ij->i", vecs, vecs) - 1.0) <= tolerance)
            bad += [cid for (_, cid), fine in zip(good, ok.tolist(), strict=True) if not fine]
        return [f"vector {cid}: not a finite unit vector of dim {self.dim}" for cid in sorted(bad)]

    def _check_details(self, t: lmdb.Transaction, key: bytes, pid: str, expected: _Expected | None) -> list[str]:
        """Problems of one parent's stored chunk details: they must equal its chunk records' (``expected``; ``None``
        where a record is missing or unreadable, which is reported already)."""
        table = self._db["details"]
        raw = None if table is None else t.get(key, db=table)
        if raw is None:
            return []  # a parent stored before details were kept: they come from its records
        try:
            details = ChunkDetails.from_bytes(bytes(raw))
        except ValueError as exc:
            return [f"parent {pid!r}: unreadable chunk details ({exc})"]
        if expected is None:
            return []  # missing or unreadable records are reported already
        if not (
            np.array_equal(details.boxes, expected.boxes)
            and np.array_equal(details.kinds, expected.kinds)
            and details.label_names() == list(expected.labels)
        ):
            return [f"parent {pid!r}: chunk details disagree with its chunk records"]
        return []

    def _check_unaccounted(self, t: lmdb.Transaction, walk: _CheckWalk) -> list[str]:
        """Listed chunks that are missing, and chunk records or vectors the walk did not account for (counted; named
        by reading every key again only when there are some)."""
        problems: list[str] = []
        if walk.missing:
            problems.append(
                f"{len(walk.missing)} chunk record(s) listed by parents are missing, e.g. {min(walk.missing)}"
            )
        if int(t.stat(self._db["chunks"])["entries"]) != walk.records:
            for key, raw in t.cursor(db=self._db["chunks"]):
                cid = _U64.unpack(bytes(key))[0]
                try:
                    owner = ChunkRecord.from_json(cid, bytes(raw)).parent_id
                    listed = t.get(owner.encode(), db=self._db["parents"])
                    chunk_ids = () if listed is None else ParentRecord.from_json(owner, bytes(listed)).chunk_ids
                except (ValueError, KeyError, TypeError):
                    continue  # an unreadable record or parent: reported by the walk
                if cid not in chunk_ids:
                    problems.append(f"chunk {cid}: orphan (its parent {owner!r} does not list it)")
        if int(t.stat(self._db["vectors"])["entries"]) != walk.vectors or walk.without_vector:
            records, vectors = _keyed_ids(t, self._db["chunks"]), _keyed_ids(t, self._db["vectors"])
            if not np.array_equal(records, vectors):
                problems.append(
                    f"vectors and chunk records differ: {len(np.setdiff1d(vectors, records))} vector(s) without a "
                    f"record, {len(np.setdiff1d(records, vectors))} record(s) without a vector"
                )
        return problems

    def disk_bytes(self) -> int:
        """Size of the LMDB data file on disk."""
        return (self.path / "data.mdb").stat().st_size


class _Expected(NamedTuple):
    """What a parent's stored chunk details must hold, from its chunk records: boxes ``(n, 4)`` int64, kinds
    (positions in ``CHUNK_KINDS``) and labels as the records hold them."""

    boxes: np.ndarray
    kinds: np.ndarray
    labels: Sequence[object]


@dataclass
class _CheckWalk:
    """What :meth:`RootStore.check`'s walk over the parents counted: chunk records each parent accounts for (its
    own, listed by it), their vectors, those without one, and listed chunks with no record."""

    records: int = 0
    vectors: int = 0
    without_vector: int = 0
    missing: list[int] = field(default_factory=list)


def _chunk_ids(value: Any) -> list[int]:
    """A parent record's chunk ids as stored, checked: a list of ints that fit the 8-byte keys (``ValueError``
    naming the first that does not; ``TypeError`` for a value that is not a list)."""
    if not isinstance(value, list | tuple):
        raise TypeError(f"chunk ids must be a list, got {type(value).__name__}")
    if value and (set(map(type, value)) != {int} or min(value) < 0 or max(value) >= 1 << 64):  # loops in C
        wrong = next(cid for cid in value if type(cid) is not int or not 0 <= cid < 1 << 64)
        raise ValueError(f"chunk id {wrong!r} is not an int in [0, 2**64)")
    return list(value)


def _keyed_ids(txn: lmdb.Transaction, db: Any) -> np.ndarray:
    """The chunk ids keyed in ``db`` (the chunk records' or the vectors' table), sorted (int64; keys only)."""
    keys = b"".join(bytes(k) for k in txn.cursor(db=db).iternext(keys=True, values=False))
    return np.frombuffer(keys, dtype=">u8").astype(np.int64)  # _U64 keys: big-endian, so in id order


def _last_id(txn: lmdb.Transaction, db: Any) -> int:
    """The largest chunk id keyed in ``db`` (-1 when empty): keys are big-endian, so the last one."""
    cursor = txn.cursor(db=db)
    return int(_U64.unpack(bytes(cursor.key()))[0]) if cursor.last() else -1

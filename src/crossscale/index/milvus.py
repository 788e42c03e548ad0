"""The chunk index in Milvus (Lite, Standalone or Distributed), with grouped search by parent.

Install the extra: ``pip install "crossscale[milvus]"``. The same class serves a Milvus Lite file and a server;
only the URI changes. The workspace's LMDB store stays the source of truth: the collection is derived from it,
records the store generation it reflects in its properties, and is rebuilt from the store when it is missing,
behind beyond the change log, or inconsistent (``crossscale repair``).

A workspace names its Milvus index by a factory string (:func:`parse_milvus_factory`)::

    "milvus"                               Milvus Lite, in the file milvus.db inside the workspace
    "milvus:/data/chunks.db"               Milvus Lite, in that file (a relative path is inside the workspace)
    "milvus://host:19530"                  a Milvus server (http://host:19530)
    "milvus:https://host:443#my_chunks"    a server, with the collection named explicitly

A new workspace records the canonical form, collection included (``milvus:milvus.db#crossscale_1f2e...``), so
several workspaces can share one server. A server's token, if it needs one, is read from the environment
variable ``CROSSSCALE_MILVUS_TOKEN`` (never written to the workspace).

Milvus Lite serves one process per file: a second process that opens the file is refused. Readers beside a
writer in another process need a Milvus server.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossscale._checks import positive_int
from crossscale.errors import ChunkIndexError, ConfigurationError, MissingDependencyError
from crossscale.index.chunk_index import _check_ids, _unit_rows
from crossscale.types import SearchParams

logger = logging.getLogger(__name__)

__all__ = [
    "MILVUS_TOKEN_ENV",
    "MilvusChunkIndex",
    "MilvusTarget",
    "is_milvus_factory",
    "parse_milvus_factory",
]

#: environment variable holding a Milvus server's token (``user:password`` or an API key)
MILVUS_TOKEN_ENV = "CROSSSCALE_MILVUS_TOKEN"
#: the Lite file of a plain ``"milvus"`` factory, inside the workspace
DEFAULT_LITE_FILE = "milvus.db"
#: collection property holding the store generation the collection reflects
GENERATION_PROPERTY = "crossscale.generation"
#: Milvus servers refuse a search limit above this (``quotaAndLimits.limits.topK``); Lite has no such limit
MAX_SEARCH_K = 16384
_PREFIX = "milvus"
_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")
_MAX_ID = (1 << 63) - 1
_MAX_PARENT_ID = 1024  # bytes; crossscale's own parent ids are at most 256
_WRITE_BATCH = 2000  # rows per upsert: ~5 MB at 512-d, well under gRPC's 64 MB message limit


_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}  # Lite file -> open MilvusChunkIndex objects of this process that connected to it


def _lite_acquire(path: str) -> None:
    with _lite_lock:
        _lite_users[path] = _lite_users.get(path, 0) + 1


def _lite_release(path: str) -> None:
    """Forget one user of a Lite file; the last one stops this process' Milvus Lite server for it, which otherwise
    keeps the file (and its lock) until the process exits, refusing every other process."""
    with _lite_lock:
        left = _lite_users.get(path, 0) - 1
        if left > 0:
            _lite_users[path] = left
            return
        _lite_users.pop(path, None)
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # a milvus-lite without a server manager: it stops at exit
        return
    server_manager_instance.release_server(path)


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:
        raise MissingDependencyError(
            'the Milvus chunk index needs pymilvus (and milvus-lite for a local file): pip install "crossscale[milvus]"'
        ) from exc
    return pymilvus


# ====================================================================== naming
@dataclass(frozen=True)
class MilvusTarget:
    """Where a workspace's chunk index lives in Milvus.

    Attributes:
        uri: a Milvus Lite file path (ending ``.db``; relative paths are inside the workspace) or a server URL.
        collection: the collection name, or ``None`` until a new workspace picks one (:meth:`named`).
    """

    uri: str
    collection: str | None = None

    @property
    def is_lite(self) -> bool:
        """True for a local Milvus Lite file, False for a server."""
        return not self.uri.startswith(_SERVER_SCHEMES)

    @property
    def factory(self) -> str:
        """The canonical factory string (what a workspace records)."""
        return f"{_PREFIX}:{self.uri}" + (f"#{self.collection}" if self.collection else "")

    def named(self) -> MilvusTarget:
        """This target with a collection name: a fresh ``crossscale_<hex>`` if it has none."""
        if self.collection:
            return self
        return MilvusTarget(self.uri, f"crossscale_{uuid.uuid4().hex[:16]}")

    def connect_uri(self, root: Path) -> str:
        """The URI to connect to: a Lite path made absolute against the workspace ``root``, a server URL as is."""
        if not self.is_lite:
            return self.uri
        return str(Path(root, self.uri).resolve())


def is_milvus_factory(factory: object) -> bool:
    """True if ``factory`` names a Milvus index (``"milvus"``, ``"milvus#name"``, ``"milvus:..."``, ``"milvus://..."``)."""
    return isinstance(factory, str) and (factory == _PREFIX or factory.startswith((_PREFIX + ":", _PREFIX + "#")))


def parse_milvus_factory(factory: str) -> MilvusTarget:
    """The :class:`MilvusTarget` a factory string names (forms in the module docstring).

    Raises:
        ConfigurationError: not a Milvus factory string, an empty or unsupported URI, or a bad collection name.
    """
    if not is_milvus_factory(factory):
        raise ConfigurationError(
            f"not a Milvus index factory string: {factory!r} (expected 'milvus' or 'milvus:<uri>')"
        )
    rest = factory[len(_PREFIX) :]
    rest, _, collection = rest.partition("#")
    if rest.startswith("://"):
        uri = "http" + rest
    elif rest.startswith(":"):
        uri = rest[1:]
    else:
        uri = DEFAULT_LITE_FILE
    if not uri:
        raise ConfigurationError(f"{factory!r}: empty Milvus URI")
    if "://" in uri and not uri.startswith(_SERVER_SCHEMES):
        raise ConfigurationError(f"{factory!r}: unsupported Milvus URI scheme (use http://, https:// or a .db file)")
    if "://" not in uri and not uri.endswith(".db"):
        raise ConfigurationError(f"{factory!r}: a Milvus Lite file name must end in .db, got {uri!r}")
    if collection and not _COLLECTION.fullmatch(collection):
        raise ConfigurationError(
            f"{factory!r}: collection name {collection!r} must start with a letter or '_' and hold only letters, "
            "digits and '_' (at most 255)"
        )
    return MilvusTarget(uri, collection or None)


# ====================================================================== the index
class MilvusChunkIndex:
    """Chunk vectors in a Milvus collection, searched by inner product; each vector carries its parent's id.

    It keeps :class:`~crossscale.index.ChunkIndex`'s contract (unit vectors in and out, caller-chosen int64 ids,
    ``search`` padded with ``-1``/``-inf``) and adds :meth:`search_grouped`: the best chunks of the ``n`` best
    distinct parents, found server-side (``group_by_field``), which is what the query path uses when ranking by
    a parent's best chunk. Writes are upserts and deletes by id, so replaying a change twice is harmless.

    Args:
        dim: vector length.
        uri: a Milvus Lite file path (its folder must exist) or a server URL (``http://host:19530``).
        collection: the collection name; created (exact FLAT index, IP metric, strong consistency) if absent.
        token: a server's token; ``""`` for none.
        client: a connected ``pymilvus.MilvusClient`` to use instead of connecting to ``uri`` (tests, pooling);
            the caller keeps it: :meth:`close` leaves it open.
        create: create the collection if it is absent (``False``: a missing collection is an error).

    Raises:
        MissingDependencyError: pymilvus (or milvus-lite, for a file) is not installed.
        ChunkIndexError: Milvus cannot be reached or opened (a Lite file in use by another process), the
            collection exists with another schema or dimension, or is absent and ``create`` is False.
    """

    device = "milvus"

    def __init__(
        self, dim: int, uri: str, collection: str, *, token: str = "", client: Any = None, create: bool = True
    ) -> None:
        self.dim = positive_int("dim", dim)
        if not isinstance(collection, str) or not _COLLECTION.fullmatch(collection):
            raise ConfigurationError(f"bad Milvus collection name {collection!r}")
        self.uri = str(uri)
        self.collection = collection
        pymilvus = _pymilvus()
        self._errors: tuple[type[BaseException], ...] = (pymilvus.MilvusException,)
        self._lite_path: str | None = None
        self._window_hint = 1  # chunks per parent the last grouped search asked for
        self._owns_client = client is None
        if client is None:
            lite = None if self.uri.startswith(_SERVER_SCHEMES) else os.path.abspath(self.uri)
            if lite is not None:  # counted first: an interrupt inside the connection still stops the server
                _lite_acquire(lite)
            try:
                client = pymilvus.MilvusClient(uri=self.uri, token=token)
            except BaseException as exc:
                if lite is not None:
                    _lite_release(lite)
                if not isinstance(exc, self._errors):
                    raise
                hint = ""
                if lite is not None:
                    hint = (
                        " (Milvus Lite serves one process per file: is another process using it? Searching beside "
                        "a writer in another process needs a Milvus server URI)"
                    )
                raise ChunkIndexError(f"cannot open Milvus at {self.uri}: {_message(exc)}{hint}") from exc
            self._lite_path = lite
        self._client = client
        self._closed = False
        try:
            self._call(self._open_collection, create)
            self._count = self._count_rows()
        except BaseException:
            self.close()
            raise

    @property
    def factory(self) -> str:
        """A description of this index: ``milvus:<uri>#<collection>``."""
        return f"{_PREFIX}:{self.uri}#{self.collection}"

    @property
    def is_trained(self) -> bool:
        """Always True: a FLAT collection needs no training."""
        return True

    @property
    def search_settings(self) -> SearchParams:
        """None (as :attr:`ChunkIndex.search_settings <crossscale.index.ChunkIndex.search_settings>` says of a
        structure without settings): Milvus' exact ``FLAT`` has no ``nprobe`` or beam."""
        return SearchParams()

    def __repr__(self) -> str:
        return f"MilvusChunkIndex(dim={self.dim}, uri={self.uri!r}, collection={self.collection!r}, size={self._count})"

    # ------------------------------------------------------------------ plumbing
    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a client operation; Milvus' own errors become :class:`ChunkIndexError` naming the collection."""
        if self._closed:
            raise ChunkIndexError(f"the Milvus index {self.collection!r} is closed")
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise ChunkIndexError(f"Milvus collection {self.collection!r} at {self.uri}: {_message(exc)}") from exc

    def _open_collection(self, create: bool) -> None:
        client = self._client
        if not client.has_collection(self.collection):
            if not create:
                raise ChunkIndexError(f"Milvus collection {self.collection!r} at {self.uri} does not exist")
            self._create()
            return
        described = client.describe_collection(self.collection)
        fields = {f["name"]: f for f in described.get("fields", [])}
        vector = fields.get("vector", {})
        dim = vector.get("params", {}).get("dim")
        if not {"id", "parent", "vector"} <= set(fields) or dim is None:
            raise ChunkIndexError(
                f"Milvus collection {self.collection!r} at {self.uri} exists and is not a crossscale chunk index "
                f"(fields {sorted(fields)})"
            )
        if int(dim) != self.dim:
            raise ChunkIndexError(
                f"Milvus collection {self.collection!r} at {self.uri} holds {dim}-d vectors, not {self.dim}-d"
            )
        client.load_collection(self.collection)

    def _create(self) -> None:
        pymilvus = _pymilvus()
        client = self._client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("parent", pymilvus.DataType.VARCHAR, max_length=_MAX_PARENT_ID)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=self.dim)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        client.create_collection(self.collection, schema=schema, consistency_level="Strong")
        # sync=False: pymilvus' wait for an index sleeps 0.5 s at least, and asks Milvus Lite for a call it lacks
        client.create_index(self.collection, params, sync=False)
        client.load_collection(self.collection)

    def _count_rows(self, where: str = "") -> int:
        rows = self._call(self._client.query, self.collection, filter=where, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _prepare(self, vectors: Any) -> np.ndarray:
        return _unit_rows(vectors, self.dim)

    # ------------------------------------------------------------------ basic facts
    def __len__(self) -> int:
        """Number of vectors in the collection (as of this object's last write or :meth:`recount`)."""
        return self._count

    def recount(self) -> int:
        """Count the collection's rows again (another process may have written since); returns the count."""
        self._count = self._count_rows()
        return self._count

    def ids(self) -> np.ndarray:
        """All ids in the collection, sorted (int64).

        Read by id range, halving any range that holds more than a server returns at once, so sparse ids cost
        no more than dense ones (and no query iterator, whose Milvus Lite fallback logs errors).
        """
        found: list[int] = []
        ranges = [(0, _MAX_ID)]
        while ranges:
            lo, hi = ranges.pop()
            where = f"id >= {lo} and id <= {hi}"
            n = self._count_rows(where)
            if n == 0:
                continue
            if n <= MAX_SEARCH_K or lo == hi:
                rows = self._call(self._client.query, self.collection, filter=where, output_fields=["id"], limit=n)
                found.extend(int(r["id"]) for r in rows)
            else:
                mid = (lo + hi) // 2
                ranges += [(mid + 1, hi), (lo, mid)]
        return np.sort(np.asarray(found, dtype=np.int64))

    # ------------------------------------------------------------------ mutation
    def add(self, vectors: Any, ids: Any, *, groups: Sequence[str] | None = None) -> None:
        """Upsert vectors with their ids and the parent id of each (``groups``, required).

        Raises:
            VectorError: wrong shape, NaN/inf or zero vectors.
            ConfigurationError: ids not unique, negative or of the wrong length; ``groups`` missing, of the wrong
                length, or holding an id that is not a non-empty str of at most 1024 UTF-8 bytes.
            ChunkIndexError: Milvus refused the write.
        """
        x = self._prepare(vectors)
        id_arr = _check_ids(ids, len(x))
        if groups is None:
            raise ConfigurationError("MilvusChunkIndex.add needs groups=: the parent id of each vector")
        names = list(groups)
        if len(names) != len(x):
            raise ConfigurationError(f"groups must name the parent of each of the {len(x)} vectors, got {len(names)}")
        for name in set(names):
            if not isinstance(name, str) or not name or len(name.encode("utf-8")) > _MAX_PARENT_ID:
                raise ConfigurationError(f"each group must be a non-empty str of <= {_MAX_PARENT_ID} bytes: {name!r}")
        for start in range(0, len(x), _WRITE_BATCH):
            stop = start + _WRITE_BATCH
            rows = [
                {"id": int(i), "parent": name, "vector": row}
                for i, name, row in zip(id_arr[start:stop], names[start:stop], x[start:stop], strict=True)
            ]
            self._call(self._client.upsert, self.collection, rows)
        if len(x):
            self._count = self._count_rows()

    def remove(self, ids: Iterable[int]) -> int:
        """Delete vectors by id; unknown ids are ignored. Returns how many were removed."""
        id_arr = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
        if id_arr.size == 0:
            return 0
        before = self._count
        for start in range(0, id_arr.size, _WRITE_BATCH):
            self._call(self._client.delete, self.collection, ids=[int(i) for i in id_arr[start : start + _WRITE_BATCH]])
        self._count = self._count_rows()
        return max(0, before - self._count)

    def reset(self) -> None:
        """Drop the collection and create it empty (a rebuild starts here); the recorded generation goes with it."""
        self._call(self._client.drop_collection, self.collection)
        self._call(self._create)
        self._count = 0

    # ------------------------------------------------------------------ search
    @staticmethod
    def _pad(rows: Iterable[Iterable[tuple[Any, ...]]], n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of shape ``(n, width)`` from each row's ``(score, id, ...)`` hits: best first (equal
        scores: lower id first), padded with ``-inf`` / ``-1``."""
        scores = np.full((n, width), -np.inf, dtype=np.float32)
        ids = np.full((n, width), -1, dtype=np.int64)
        for row, hits in enumerate(rows):
            pairs = sorted(((h[0], h[1]) for h in hits), key=lambda p: (-p[0], p[1]))[:width]
            if pairs:
                scores[row, : len(pairs)] = [s for s, _ in pairs]
                ids[row, : len(pairs)] = [i for _, i in pairs]
        return scores, ids

    def search(self, vectors: Any, k: int, *, params: SearchParams | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best chunks for each query row (at most 16384: a Milvus server's limit).

        ``params`` (:class:`~crossscale.types.SearchParams`) is taken as :meth:`ChunkIndex.search
        <crossscale.index.ChunkIndex.search>` takes it, so that a search with settings works on either; the
        collection's index is Milvus' exact ``FLAT``, which has none of them, so they change nothing.

        Returns:
            ``(scores, ids)``, both of shape ``(n, k)``, best first (equal scores: lower id first); where fewer
            than ``k`` results exist, ids are ``-1`` and scores ``-inf``.
        """
        k = positive_int("k", k)
        SearchParams.checked(params)  # taken, and changes nothing
        q = self._prepare(vectors)
        if len(q) == 0 or self._count == 0:
            return self._pad([], len(q), k)
        limit = min(k, self._count, MAX_SEARCH_K)
        results = self._call(
            self._client.search,
            self.collection,
            data=list(q),
            limit=limit,
            output_fields=["id"],  # not the vectors, which Milvus returns by default
            search_params={"metric_type": "IP"},
        )
        return self._pad(([(float(h["distance"]), int(h["id"])) for h in hits] for hits in results), len(q), k)

    def search_grouped(self, vectors: Any, groups: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The best chunks of the ``groups`` best distinct parents of each query row, by Milvus' grouped search.

        Parents are ranked by their best chunk; each brings up to ``group_size`` of its chunks (Milvus may return
        fewer). Rows are flattened across parents and sorted best first, as :meth:`search` returns them.

        A grouped search may return fewer parents than asked although more exist: Milvus Lite groups a fixed
        window of ``3 * groups * group_size`` nearest chunks, so when a parent's chunks are alike one parent fills
        it. Such rows are searched again with a 4x wider window (each parent's chunks trimmed back to
        ``group_size``), until they hold ``groups`` parents or the window covers the collection or a server's
        limit. The next call starts with the window the last one needed.

        Returns:
            ``(scores, ids)`` of shape ``(n, groups * group_size)``, padded with ``-inf``/``-1``.
        """
        groups = positive_int("groups", groups)
        group_size = positive_int("group_size", group_size)
        q = self._prepare(vectors)
        width = groups * group_size
        if len(q) == 0 or self._count == 0:
            return self._pad([], len(q), width)
        limit = min(groups, MAX_SEARCH_K)
        ask = max(group_size, min(self._window_hint, MAX_SEARCH_K // limit))  # what the last search needed
        rows = [_best_per_group(hits, group_size) for hits in self._grouped(q, limit, ask)]
        todo = [r for r, hits in enumerate(rows) if len({p for _, _, p in hits}) < limit]
        while todo and 3 * limit * ask < self._count and limit * ask * 4 <= MAX_SEARCH_K:
            ask *= 4
            logger.debug("grouped search found too few parents for %d row(s); asking %d per parent", len(todo), ask)
            for r, hits in zip(todo, self._grouped(q[todo], limit, ask), strict=True):
                rows[r] = _best_per_group(hits, group_size)
            todo = [r for r in todo if len({p for _, _, p in rows[r]}) < limit]
        self._window_hint = ask  # alike chunks stay alike: the next search starts with this window
        return self._pad(rows, len(q), width)

    def _grouped(self, q: np.ndarray, limit: int, group_size: int) -> list[list[tuple[float, int, str]]]:
        """One grouped search: per row, ``(score, id, parent)`` of each hit."""
        results = self._call(
            self._client.search,
            self.collection,
            data=list(q),
            limit=limit,
            group_by_field="parent",
            group_size=group_size,  # never strict_group_size: Milvus Lite drops true top groups with it
            output_fields=["parent"],
            search_params={"metric_type": "IP"},
        )
        return [[(float(h["distance"]), int(h["id"]), str(h["entity"]["parent"])) for h in hits] for hits in results]

    # ------------------------------------------------------------------ the generation the collection reflects
    def committed_generation(self) -> int:
        """The store generation recorded by the last :meth:`commit`; ``-1`` if none (new or reset collection)."""
        described = self._call(self._client.describe_collection, self.collection)
        value = (described.get("properties") or {}).get(GENERATION_PROPERTY)
        try:
            return int(value) if value is not None else -1
        except ValueError:
            return -1

    def commit(self, generation: int) -> None:
        """Flush what was written, then record that the collection reflects store ``generation``."""
        self._call(self._client.flush, self.collection)
        self._call(
            self._client.alter_collection_properties,
            self.collection,
            properties={GENERATION_PROPERTY: str(int(generation))},
        )

    def close(self) -> None:
        """Close the connection (if this object made it) and, for the last user of a Lite file in this process,
        stop its Milvus Lite server so that other processes may open the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._owns_client:
                self._client.close()
        except self._errors as exc:  # closing must never mask what the caller is doing
            logger.warning("closing Milvus at %s: %s", self.uri, _message(exc))
        finally:
            if self._lite_path is not None:  # even when interrupted: a running Lite server keeps the file
                _lite_release(self._lite_path)


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc)


def _best_per_group(hits: list[tuple[float, int, str]], size: int) -> list[tuple[float, int, str]]:
    """The best ``size`` hits of each parent among ``hits``."""
    kept: dict[str, int] = {}
    out = []
    for hit in sorted(hits, key=lambda h: (-h[0], h[1])):
        if kept.get(hit[2], 0) < size:
            kept[hit[2]] = kept.get(hit[2], 0) + 1
            out.append(hit)
    return out

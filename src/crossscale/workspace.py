"""The workspace on disk: layout, typed config, writer lock, the store and the index derived from it.

A workspace is a directory::

    ws/
      workspace.json   format version and the configuration that built it (written once)
      store/           LMDB: parents' image bytes, metadata, chunk records, chunk vectors, change log
      chunks.index     FAISS index, derived from the store; records the store generation it reflects
      milvus.db/       (instead of chunks.index, with index_factory="milvus") the Milvus Lite chunk collection
      keypoints.index  (with local search) every parent's local descriptors in a keypoint index, derived from the
                       store's local features; records the store generation and the parents it reflects
      lock             held by the one process that may write

The store is the source of truth. The index is saved atomically with the generation it reflects; on open it
is caught up from the store's change log, or rebuilt from the stored vectors if it is missing, corrupt or
inconsistent. A Milvus chunk index (:class:`~crossscale.index.MilvusChunkIndex`, a Lite file or a server) is
derived the same way: the generation it reflects is a property of its collection.

:class:`Workspace` knows nothing of segmenters, encoders or rankers: the facade
(:class:`~crossscale.CrossScaleSearch`) composes those around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from crossscale._files import TEMP_SUFFIX, SaveSchedule, atomic_write
from crossscale._images import decode_stored
from crossscale._memory import release_freed_memory
from crossscale.errors import (
    ChunkIndexError,
    ConfigurationError,
    CrossScaleError,
    ParentNotFoundError,
    WorkspaceError,
    WorkspaceFormatError,
    WorkspaceLockedError,
)
from crossscale.index import (
    DEFAULT_MAX_MEMORY,
    ChunkIndex,
    IndexPlan,
    ParentMap,
    RootStore,
    choose_index,
    parse_memory,
)
from crossscale.index.choose import check_reduce_dim
from crossscale.index.milvus import (
    DEFAULT_LITE_FILE,
    MILVUS_TOKEN_ENV,
    MilvusChunkIndex,
    is_milvus_factory,
    parse_milvus_factory,
)
from crossscale.index.root_store import VECTOR_DTYPES, NewParent, ParentRecord
from crossscale.protocols import DetailsLookup
from crossscale.types import ChunkDetails, ChunkRecord, SearchParams

logger = logging.getLogger(__name__)

__all__ = [
    "AnyChunkIndex",
    "COMPACT_SHARE",
    "ComponentSpec",
    "Configure",
    "KEYPOINT_FILE",
    "SaveSchedule",
    "VerifyReport",
    "WORKSPACE_FORMAT",
    "Workspace",
    "WorkspaceConfig",
    "WorkspaceLock",
    "new_config",
    "preload_store",
]

#: the newest layout version this crossscale reads. Format 2 (0.2) adds a verifier and local features, "auto" indexes
#: float16 vectors and Milvus chunk indexes;
#: a workspace with no verifier, a faiss factory string and float32 vectors is still written as format 1 (0.1 reads it).
WORKSPACE_FORMAT = 2
CONFIG_FILE = "workspace.json"
#: ``index_factory`` that lets crossscale choose (and migrate) the index by size and memory budget
AUTO_INDEX = "auto"
STORE_DIR = "store"
INDEX_FILE = "chunks.index"
#: the parent map (chunk id -> parent, box, kind, label), derived from the store and saved with the chunk index, so
#: that opening need not read every parent's record
PARENTS_FILE = "parents.map"
#: the store's info key of the search setting saved for facades to start from (``Workspace.save_search_params``)
SEARCH_PARAMS_KEY = "search_params"
#: the keypoint index of local search (:class:`~crossscale.search.LocalCandidates`), derived from the store
KEYPOINT_FILE = "keypoints.index"
LOCK_FILE = "lock"
#: a writer's save rebuilds the chunk index from the store once its structure holds more removed vectors than this
#: share of the live ones (HNSW cannot remove: it skips them at search, still holding and walking them)
COMPACT_SHARE = 0.1

AnyChunkIndex = ChunkIndex | MilvusChunkIndex
"""The chunk index a workspace derives from its store: FAISS in memory, or a Milvus collection."""


# ====================================================================== config
@dataclass(frozen=True)
class ComponentSpec:
    """How to rebuild a component by name: ``create_encoder(name, **kwargs)`` or ``create_segmenter(...)``."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}


@dataclass(frozen=True)
class WorkspaceConfig:
    """What a workspace is, written once to ``workspace.json`` when it is created.

    Attributes:
        encoder_name, dim: the encoder's identity and vector length; reopening with another is refused.
        encoder_spec: how to rebuild the encoder by name, or ``None`` if it was passed as an object.
        segmenter_name: the segmenter's description (informative: new images may use another segmenter).
        segmenter_spec: how to rebuild the segmenter by name, or ``None`` if it was passed as an object.
        index_factory: the faiss factory string of the chunk index, or ``"auto"`` (format 2): chosen by the
            collection's size within ``max_memory`` (:func:`~crossscale.index.choose_index`), and migrated to a
            bigger structure as the collection grows (by :meth:`Workspace.add`'s batch that outgrows it, or at
            :meth:`Workspace.save`); or a Milvus collection
            (format 2), recorded as ``milvus:<uri>#<collection>`` (:func:`~crossscale.index.parse_milvus_factory`).
        max_memory: the RAM budget of an ``"auto"`` index, in bytes (``None`` otherwise).
        vector_dtype: how the store keeps vectors: ``"float32"``, or ``"float16"`` (format 2; half the bytes).
        reduce_dim: an ``"auto"`` index projects vectors to this many dimensions once the collection is big
            enough to learn the projection from (format 2; ``None``: never). The store keeps them whole.
        created: when the workspace was created (ISO 8601).
        verifier_name: the verifier whose features each parent keeps (format 2), or ``None``.
        verifier_spec: how to rebuild the verifier by name, or ``None`` if none or passed as an object.
        format: the layout version: 1, or 2 for a workspace with a verifier or an ``"auto"`` index.
    """

    encoder_name: str
    dim: int
    encoder_spec: ComponentSpec | None
    segmenter_name: str | None
    segmenter_spec: ComponentSpec | None
    index_factory: str = "Flat"
    created: str = ""
    verifier_name: str | None = None
    verifier_spec: ComponentSpec | None = None
    format: int = 1
    max_memory: int | None = None
    vector_dtype: str = "float32"
    reduce_dim: int | None = None

    def index_plan(self, n: int) -> IndexPlan:
        """The index structure for ``n`` vectors: the recorded factory, or ``"auto"``'s choice."""
        if self.index_factory != AUTO_INDEX:
            return IndexPlan(self.index_factory, 0, None, 0, "chosen when the workspace was created")
        return choose_index(n, self.dim, self.max_memory or DEFAULT_MAX_MEMORY, reduce_dim=self.reduce_dim)

    def to_json(self) -> dict[str, Any]:
        """The ``workspace.json`` document."""
        doc: dict[str, Any] = {
            "format": self.format,
            "encoder": {
                "name": self.encoder_name,
                "dim": self.dim,
                "spec": self.encoder_spec.to_json() if self.encoder_spec else None,
            },
            "segmenter": {
                "name": self.segmenter_name,
                "spec": self.segmenter_spec.to_json() if self.segmenter_spec else None,
            },
            "index_factory": self.index_factory,
            "created": self.created,
        }
        if self.max_memory is not None:
            doc["max_memory"] = self.max_memory
        if self.vector_dtype != "float32":
            doc["vector_dtype"] = self.vector_dtype
        if self.reduce_dim is not None:
            doc["reduce_dim"] = self.reduce_dim
        if self.verifier_name is not None:
            doc["verifier"] = {
                "name": self.verifier_name,
                "spec": self.verifier_spec.to_json() if self.verifier_spec else None,
            }
        return doc

    @classmethod
    def from_json(cls, doc: object, source: str = CONFIG_FILE) -> WorkspaceConfig:
        """Parse and check a ``workspace.json`` document.

        Raises:
            WorkspaceFormatError: not a crossscale config, a newer format, or a field missing or of the wrong type.
        """
        if not isinstance(doc, dict) or not isinstance(doc.get("format"), int):
            raise WorkspaceFormatError(f"{source}: not a crossscale workspace config")
        if doc["format"] > WORKSPACE_FORMAT:
            raise WorkspaceFormatError(
                f"{source}: workspace format {doc['format']} is newer than this crossscale supports "
                f"({WORKSPACE_FORMAT}); upgrade crossscale"
            )
        try:
            encoder, segmenter, verifier = doc["encoder"], doc["segmenter"], doc.get("verifier") or {}
            config = cls(
                encoder_name=_typed(encoder["name"], str, "encoder.name"),
                dim=_typed(encoder["dim"], int, "encoder.dim"),
                encoder_spec=_spec(encoder.get("spec"), "encoder.spec"),
                segmenter_name=_typed(segmenter.get("name"), (str, type(None)), "segmenter.name"),
                segmenter_spec=_spec(segmenter.get("spec"), "segmenter.spec"),
                index_factory=_typed(doc["index_factory"], str, "index_factory"),
                created=_typed(doc.get("created", ""), str, "created"),
                verifier_name=_typed(verifier.get("name"), (str, type(None)), "verifier.name"),
                verifier_spec=_spec(verifier.get("spec"), "verifier.spec"),
                format=doc["format"],
                max_memory=_typed(doc.get("max_memory"), (int, type(None)), "max_memory"),
                vector_dtype=_typed(doc.get("vector_dtype", "float32"), str, "vector_dtype"),
                reduce_dim=_typed(doc.get("reduce_dim"), (int, type(None)), "reduce_dim"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise WorkspaceFormatError(f"{source}: malformed workspace config ({exc!r})") from exc
        if config.vector_dtype not in VECTOR_DTYPES:
            raise WorkspaceFormatError(f"{source}: unknown vector_dtype {config.vector_dtype!r}")
        if config.dim < 1:
            raise WorkspaceFormatError(f"{source}: encoder.dim must be positive, got {config.dim}")
        if config.reduce_dim is not None and not (0 < config.reduce_dim < config.dim):
            raise WorkspaceFormatError(f"{source}: reduce_dim must be in [1, {config.dim}), got {config.reduce_dim}")
        return config


def _typed(value: Any, kind: type | tuple[type, ...], key: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{key} is {value!r}")
    return value


def _spec(value: Any, key: str) -> ComponentSpec | None:
    if value is None:
        return None
    return ComponentSpec(
        _typed(value["name"], str, f"{key}.name"), dict(_typed(value["kwargs"], dict, f"{key}.kwargs"))
    )


# ====================================================================== lock
class WorkspaceLock:
    """The writer's exclusive lock on ``ws/lock`` (``filelock``: ``flock`` on POSIX, ``msvcrt`` on Windows).

    Taken without waiting: a second writer is refused at once. The operating system drops it when the
    process dies, however it dies, so a killed writer never leaves a workspace locked.
    """

    def __init__(self, path: Path) -> None:
        from filelock import FileLock, Timeout

        self._lock: Any = FileLock(path, thread_local=False)
        try:
            self._lock.acquire(timeout=0)
        except Timeout as exc:
            raise WorkspaceLockedError(
                f"{path.parent}: another process has this workspace open for writing; "
                "open it with readonly=True to search, or wait for the writer to close"
            ) from exc

    def release(self) -> None:
        """Release the lock. Idempotent."""
        if self._lock.is_locked:
            self._lock.release(force=True)


# ====================================================================== verify
@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`Workspace.verify` found.

    Attributes:
        ok: no invariant is broken.
        problems: broken invariants (``crossscale repair`` fixes those of the index; store problems need care).
        notes: states that are normal but worth knowing (index file behind, leftover temp files).
        parents, chunks, indexed: counts in the store and in the index.
        generation: the store generation checked.
    """

    ok: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    parents: int
    chunks: int
    indexed: int
    generation: int

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


# ====================================================================== the workspace
Configure = Callable[["WorkspaceConfig | None"], WorkspaceConfig]
"""Called under the lock with the stored config (``None`` for a new workspace); returns the config to use."""


@dataclass(eq=False)
class Workspace:
    """A workspace directory opened for reading, or for writing by the one process holding its lock.

    Build it with :meth:`open`. The store is the source of truth; :attr:`index` is derived from it and always
    reflects store generation :attr:`generation`.
    """

    path: Path
    config: WorkspaceConfig
    store: RootStore = field(repr=False)
    index: AnyChunkIndex = field(repr=False)
    parents: ParentMap = field(repr=False)
    _generation: int
    _lock: WorkspaceLock | None = field(repr=False)
    _dirty: bool = field(default=False, init=False, repr=False)
    _closed: bool = field(default=False, init=False)
    _budget_warned: str = field(default="", init=False, repr=False)  # the structure said to outgrow the budget
    #: (generation, index version) the index file holds, and the generation the parent map file holds (writer)
    _index_on_disk: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _parents_on_disk: int | None = field(default=None, init=False, repr=False)
    #: the saved search setting as read for an index structure (re-read when the structure changes)
    _saved_params: tuple[tuple[str, Any], SearchParams] | None = field(default=None, init=False, repr=False)
    #: when :meth:`save_if_due` rewrites the index file after ingest work
    save_schedule: SaveSchedule = field(default_factory=SaveSchedule, init=False, repr=False)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        configure: Configure,
        *,
        readonly: bool = False,
        device: str = "auto",
        map_size: int = 64 << 20,
    ) -> Workspace:
        """Create the workspace at ``path`` or reopen it.

        ``configure`` is called under the writer's lock with the stored config, or ``None`` when there is none
        yet; it checks compatibility and returns the config to use. A new one is written before anything else.

        Raises:
            WorkspaceError: ``path`` is a file, a non-empty folder that is no workspace, or absent when ``readonly``.
            WorkspaceLockedError: another process holds the writer's lock.
            WorkspaceFormatError: the workspace is of a newer or unknown format.
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"{root}: exists and is not a directory")
        config_path = root / CONFIG_FILE
        if readonly and not config_path.exists():
            raise WorkspaceError(f"{root}: no workspace to open read-only")
        if not config_path.exists() and root.exists() and not _is_unfinished(root):
            raise WorkspaceError(f"{root}: directory is not empty and is not a crossscale workspace")
        root.mkdir(parents=True, exist_ok=True)
        lock = None if readonly else WorkspaceLock(root / LOCK_FILE)
        backend: MilvusChunkIndex | None = None
        index: AnyChunkIndex
        try:
            if lock is not None:  # a writer killed mid-save leaves its temporary file behind
                for leftover in root.glob("*" + TEMP_SUFFIX):
                    leftover.unlink(missing_ok=True)
            stored = _read_config(config_path) if config_path.exists() else None  # decided under the lock
            config = configure(stored)
            config_bytes = json.dumps(config.to_json(), indent=2, sort_keys=True).encode()
            if stored is None and not is_milvus_factory(config.index_factory):
                ChunkIndex(config.dim, config.index_plan(0).factory, device="cpu")  # a bad factory fails now
            if stored is None:
                shutil.rmtree(root / STORE_DIR, ignore_errors=True)  # an empty one of a killed creation
            elif config != stored and readonly:
                raise ConfigurationError(f"{root}: a read-only workspace cannot change its config")
            store = RootStore(
                root / STORE_DIR,
                dim=config.dim,
                readonly=readonly,
                map_size=map_size,
                vector_dtype=None if readonly else config.vector_dtype,
            )
            try:
                if is_milvus_factory(config.index_factory):  # reached before a new workspace exists
                    backend = _open_backend(root, config, new=stored is None, readonly=readonly)
                if stored is None:  # written last: a workspace.json means a whole workspace, readers included
                    atomic_write(config_path, config_bytes)
                elif config != stored:  # a writer gave an "auto" index another budget
                    config.index_plan(store.chunk_count())  # one that cannot hold what is stored is refused
                    atomic_write(config_path, config_bytes)
                if backend is not None:
                    index, parents, generation, on_disk = _load_backend(root, store, backend, readonly)
                else:
                    index, parents, generation, on_disk = _load_index(root, store, config, device, readonly)
            except BaseException:
                store.close()
                if backend is not None:
                    backend.close()
                raise
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        workspace = cls(root, config, store, index, parents, generation, lock)
        workspace.save_schedule = SaveSchedule.for_file(root / INDEX_FILE)
        if on_disk.index_file:
            workspace._index_on_disk = workspace._index_state()
        if on_disk.parents_file:
            workspace._parents_on_disk = generation
        return workspace

    # ------------------------------------------------------------------ state
    @property
    def readonly(self) -> bool:
        return self._lock is None

    @property
    def generation(self) -> int:
        """The store generation the in-memory index reflects."""
        return self._generation

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self, *, write: bool = False) -> None:
        """Raise :class:`WorkspaceError` if closed, or (``write``) open read-only."""
        if self._closed:
            raise WorkspaceError(f"{self.path}: workspace is closed")
        if write and self._lock is None:
            raise WorkspaceError(f"{self.path}: workspace is open read-only")

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        self.check_open()
        return len(self.store)

    def __contains__(self, parent_id: object) -> bool:
        self.check_open()
        return parent_id in self.store

    def parent_ids(self) -> Iterator[str]:
        self.check_open()
        return self.store.parent_ids()

    def record(self, parent_id: str) -> ParentRecord:
        self.check_open()
        return self.store.parent(parent_id)

    def image(self, parent_id: str) -> Image.Image:
        """The parent image, decoded as it was when indexed (the pixels its boxes and vectors refer to)."""
        self.check_open()
        return decode_stored(self.store.image_bytes(parent_id), f"parent {parent_id!r}")

    def image_if_present(self, parent_id: str) -> Image.Image | None:
        """:meth:`image`, or ``None`` if a writer deleted the parent since a search ranked it."""
        try:
            return self.image(parent_id)
        except ParentNotFoundError:
            return None

    def records(self, chunk_ids: Iterable[int]) -> dict[int, ChunkRecord]:
        """The records of the given chunk ids; ids no longer stored are left out."""
        return self.store.chunk_records(chunk_ids)

    def local_features(self, parent_id: str) -> bytes | None:
        """What the workspace's verifier extracted from the parent when it was indexed, or ``None``."""
        return self.store.local_features(parent_id)

    def searchable_index(self) -> AnyChunkIndex:
        """The index, first rebuilt from the store if an interrupted update left it half-applied."""
        self.check_open()
        self._clean()
        return self.index

    def chunk_details(self) -> DetailsLookup | None:
        """The parent map's chunk details when they reflect the store now, else ``None`` (read the records).

        A writer's map is always current. A reader's is the snapshot it loaded: once a writer has committed
        since, a search reads records, which leave out parents deleted meanwhile (as before details existed).
        """
        if self._lock is None and self.store.generation != self._generation:
            return None
        return self.parents.details

    def saved_search_params(self) -> SearchParams:
        """The search setting saved with :meth:`save_search_params`, for the index structure it was saved with;
        ``SearchParams()`` (the index's own) when none is saved, or when the index has changed structure since (a
        migration to more lists: a setting tuned for the old one may miss parents; logged: tune again)."""
        self.check_open()
        structure = self._structure()
        if self._saved_params is None or self._saved_params[0] != structure:  # e.g. migrated since: read again
            self._saved_params = (structure, self._read_saved_params(structure))
        return self._saved_params[1]

    def _read_saved_params(self, structure: tuple[str, Any]) -> SearchParams:
        """:meth:`saved_search_params` for ``structure``, read from the store (a mismatch or a bad value logged)."""
        stored = self.store.get_info(SEARCH_PARAMS_KEY)
        if stored is None:
            return SearchParams()
        try:
            params = SearchParams(**{f.name: stored.get(f.name) for f in dataclasses.fields(SearchParams)})
            saved_for = (str(stored["structure"]), stored.get("reduce_dim"))
        except (AttributeError, KeyError, TypeError, CrossScaleError) as exc:
            logger.warning("%s: the saved search setting %r is unreadable (%s); not used", self.path, stored, exc)
            return SearchParams()
        if saved_for != structure:
            logger.warning(
                "%s: the saved search setting (%s) is for a %s index, this one is %s; not used: tune again",
                self.path,
                params.describe(),
                saved_for[0],
                structure[0],
            )
            return SearchParams()
        return params

    def save_search_params(self, params: SearchParams) -> None:
        """Save ``params`` as the search setting that facades opening this workspace start from (their
        :attr:`~crossscale.CrossScaleSearch.search_params`), for the index's present structure;
        ``SearchParams()`` clears it. A committed write of its own: readers opened after it see it.

        Raises:
            WorkspaceError: the workspace is open read-only or closed.
            ConfigurationError: ``params`` is not a :class:`~crossscale.types.SearchParams`.
        """
        self.check_open(write=True)
        if not isinstance(params, SearchParams):
            raise ConfigurationError(f"params must be a crossscale.types.SearchParams, got {type(params).__name__}")
        structure = self._structure()
        value = None if params == SearchParams() else {**dataclasses.asdict(params), "structure": structure[0]}
        if value is not None:
            value["reduce_dim"] = structure[1]
        self.store.set_info(SEARCH_PARAMS_KEY, value)
        self._saved_params = (structure, params)

    def _structure(self) -> tuple[str, Any]:
        """What a saved search setting is tied to: the index's structure and projection."""
        return self.index.factory, getattr(self.index, "reduce_dim", None)

    def info(self) -> dict[str, Any]:
        """A summary, JSON-ready."""
        self.check_open()
        settings = self.index.search_settings  # the index's own: a search's rescore is the facade's
        return {
            "path": str(self.path),
            "format": self.config.format,
            "parents": len(self.store),
            "chunks": self.store.chunk_count(),
            "indexed_vectors": len(self.index),
            "encoder": self.config.encoder_name,
            "dim": self.config.dim,
            "segmenter": self.config.segmenter_name,
            "index_factory": self.config.index_factory,
            "index_structure": self.index.factory,
            "reduce_dim": self.config.reduce_dim,
            "index_reduce_dim": getattr(self.index, "reduce_dim", None),
            "max_memory": self.config.max_memory,
            "vector_dtype": self.store.vector_dtype,
            "index_device": self.index.device,
            "search_settings": {"nprobe": settings.nprobe, "ef_search": settings.ef_search},
            "saved_search_params": self.store.get_info(SEARCH_PARAMS_KEY),  # with the structure it is for
            "store_bytes": self.store.disk_bytes(),
            "verifier": self.config.verifier_name,
            "parents_with_local_features": self.store.local_count(),
            "generation": self._generation,
        }

    # ------------------------------------------------------------------ writing
    def add(self, parents: Sequence[NewParent]) -> list[list[int]]:
        """Store ``parents`` in one transaction and add their vectors to the index; returns their chunk ids.

        An ``"auto"`` index the collection outgrows with this batch is migrated now and saved (see :meth:`save`),
        so a long ingest stays within ``max_memory`` instead of growing a Flat index until its end.

        Raises:
            ConfigurationError, WorkspaceError: from the store; then nothing was stored.
        """
        self.check_open(write=True)
        self._clean()  # an index an interruption left half-updated is rebuilt first, never built upon
        assigned = self.store.add_parents(parents)
        with self._mutation():
            if assigned:  # one write for the batch (a Milvus round trip each otherwise)
                _index_add(
                    self.index,
                    np.concatenate([self.store.as_stored(p.vectors) for p in parents]),  # as a rebuild reads them
                    np.concatenate([np.asarray(ids, np.int64) for ids in assigned]),
                    [p.parent_id for p, ids in zip(parents, assigned, strict=True) for _ in ids],
                )
            self.parents.add_many((p.parent_id, ids, p.details) for p, ids in zip(parents, assigned, strict=True))
        if assigned and self._grow_if_outgrown():
            self._checkpoint()
        return assigned

    def delete(self, parent_id: str) -> None:
        """Remove a parent, its chunk records and its vectors. Raises :class:`ParentNotFoundError`."""
        self.check_open(write=True)
        self._clean()
        removed = self.store.delete_parent(parent_id)
        with self._mutation():
            self.index.remove(removed)
            self.parents.remove(parent_id)

    def delete_many(self, parent_ids: Iterable[str]) -> list[str]:
        """Remove those of ``parent_ids`` that are stored, with their chunk records and vectors, in one store
        transaction, and their chunks from the index in one call; returns the ids deleted (each once, in the order
        given)."""
        self.check_open(write=True)
        self._clean()
        deleted, removed = self.store.delete_parents(parent_ids)
        if deleted:
            with self._mutation():
                self.index.remove(removed)
                self.parents.remove_many(deleted)
        return deleted

    @contextlib.contextmanager
    def _mutation(self) -> Iterator[None]:
        """Bring the in-memory index and parent map up to a store commit just made (we hold the only write lock).

        Until the block completes the index is *dirty*: half of a batch may be in it (an interrupt, an
        error). A dirty index is never saved nor searched: it is rebuilt from the store first.
        """
        self._dirty = True
        yield
        self._generation = self.store.generation
        self._dirty = False

    def _clean(self) -> None:
        if self._dirty:
            logger.warning("the chunk index was left half-updated by an interruption; rebuilding it from the store")
            with self.store.snapshot() as txn:
                self._reload(txn)
            self._dirty = False

    def _reload(self, txn: Any, *, full: bool = False) -> None:
        """Replace the in-memory index and parent map by ones rebuilt from the store as ``txn`` sees it.

        A Milvus collection is caught up from its last commit (writes are idempotent), or refilled if that fails
        or ``full``; a reader never writes to it.
        """
        if not isinstance(self.index, MilvusChunkIndex):
            self.index = _rebuild(self.store, self.config, self.index.device, txn)
        elif self.readonly:
            self.index.recount()
        else:
            _sync_backend(self.store, self.index, txn, full=full)
        self.parents = ParentMap.from_parents(self.store.parent_details(txn))
        self._generation = self.store.generation_at(txn)

    def save(self) -> None:
        """Write the chunk index and the parent map to disk now (the facade also does it on close, and after an
        ``index()`` call when :meth:`save_if_due` finds it due); a file that already holds what is in memory is
        not rewritten.

        An ``"auto"`` index that the collection has outgrown is first rebuilt from the store in the structure
        :func:`~crossscale.index.choose_index` picks now; the file is replaced atomically, so a kill at any
        point leaves the old index, which opening catches up from the store.
        """
        self.check_open(write=True)
        self._write_index()

    def save_if_due(self, work_seconds: float) -> bool:
        """:meth:`save`, if :attr:`save_schedule` finds a write due after ``work_seconds`` more of ingest (a
        large index file is not rewritten after every small ``index()`` call); True if it saved. What is not
        written yet is caught up from the store by the next open, and :meth:`close` writes it."""
        self.check_open(write=True)
        if not self.save_schedule.due(work_seconds, what="chunk index file"):
            return False
        self._write_index()
        return True

    def _write_index(self) -> None:
        """Bring the index up to date with the store, migrate it if outgrown (or rebuild it if it holds many
        removed vectors), and write its file and the parent map's; files that already hold what is in memory
        are not rewritten (a writer that only searched closes without writing gigabytes)."""
        self._clean()
        if not self._grow_if_outgrown():
            self._compact_if_tombstoned()
        if self._index_on_disk is not None and self._index_on_disk == self._index_state():
            if self._parents_on_disk != self._generation:
                self._save_parents()
            return
        started = time.perf_counter()  # the write alone: a migration's time would put the next write off too long
        self._save_files()
        self.save_schedule.wrote(time.perf_counter() - started)

    def _index_state(self) -> tuple[int, int] | None:
        """What the index holds: the store generation and its version (``None``: unknown, e.g. Milvus)."""
        version = getattr(self.index, "version", None)
        return None if version is None else (self._generation, int(version))

    def _save_files(self) -> None:
        """Write the parent map's file and the index's (see :func:`_save_index`), and note what they hold."""
        self._index_on_disk = self._parents_on_disk = None  # until written: a failure leaves them unknown
        saved = _save_index(self.path, self.store, self.index, self.parents, self._generation)
        self._index_on_disk = self._index_state()
        self._parents_on_disk = self._generation if saved else None

    def _save_parents(self) -> None:
        if _save_parents(self.path, self.parents, self._generation):
            self._parents_on_disk = self._generation

    def _grow_if_outgrown(self) -> bool:
        """Rebuild an ``"auto"`` index from the store in the structure its size calls for, if that is bigger;
        True if it did."""
        if self.config.index_factory != AUTO_INDEX:
            return False
        try:
            plan = self.config.index_plan(len(self.index))
        except ConfigurationError as exc:  # the parents are stored; never fail a save for the budget
            if self.index.factory != self._budget_warned:  # once per structure, not once per ingest batch
                logger.warning("%s; keeping the %s index", exc, self.index.factory)
                self._budget_warned = self.index.factory
            return False
        if _growth_key(plan.factory, plan.reduce_dim) <= _growth_key(
            self.index.factory, getattr(self.index, "reduce_dim", None)
        ):
            return False
        logger.info("migrating the chunk index from %s to %s (%s)", self.index.factory, plan.factory, plan.reason)
        started = time.perf_counter()
        self._rebuild_in_place()
        logger.info(
            "migrated %d vectors to %s in %.1f s", len(self.index), self.index.factory, time.perf_counter() - started
        )
        return True

    def _compact_if_tombstoned(self) -> bool:
        """Rebuild the index from the store if its structure holds more removed vectors (HNSW's tombstones) than
        :data:`COMPACT_SHARE` of the live ones; True if it did."""
        removed = int(getattr(self.index, "tombstone_count", 0))
        if removed == 0 or removed <= COMPACT_SHARE * len(self.index):
            return False
        started = time.perf_counter()
        self._rebuild_in_place()
        logger.info(
            "rebuilt the %s chunk index from the store without its %d removed vectors (%d live) in %.1f s",
            self.index.factory,
            removed,
            len(self.index),
            time.perf_counter() - started,
        )
        return True

    def _rebuild_in_place(self) -> None:
        """Replace the index by one rebuilt from the store (:meth:`_reload`), letting the old one go first."""
        # So a rebuild holds one index, not two (at 10M: ~4 GB, not ~8). Until the new one is in, the index is
        # dirty: an error or interrupt leaves it to be rebuilt from the store.
        self._dirty = True
        self.index = ChunkIndex(self.config.dim, device=self.index.device)  # an empty placeholder
        release_freed_memory()
        with self.store.snapshot() as txn:
            self._reload(txn)
        self._dirty = False
        release_freed_memory()  # the training sample's, the build's temporaries

    def _checkpoint(self) -> None:
        """Save the index just migrated during an ingest: reopening then starts from it, not from the outgrown
        file and every change since. A failed save is logged (the store has committed; the next save retries)."""
        started = time.perf_counter()
        try:
            self._save_files()
        except WorkspaceError as exc:
            logger.error("%s", exc)
        else:
            self.save_schedule.wrote(time.perf_counter() - started)

    def rebuild_index(self) -> None:
        """Rebuild the chunk index from the vectors in the store, and save it (``crossscale repair``)."""
        self.check_open(write=True)
        with self.store.snapshot() as txn:
            self._reload(txn, full=True)
        self.save()

    def refresh(self) -> int:
        """Catch a reader's index up with what writers committed since; returns the store generation now seen.

        A workspace opened read-only searches the snapshot it loaded; this shows it newer parents. For the
        writer it is a no-op: its index is always current.
        """
        self.check_open()
        self._saved_params = None  # a writer may have saved another search setting
        with self.store.snapshot() as txn:
            generation = self.store.generation_at(txn)
            if generation != self._generation:
                shared = isinstance(self.index, MilvusChunkIndex)  # the writer keeps it current; never write to it
                try:
                    caught_up = _catch_up(
                        self.store, None if shared else self.index, self.parents, self._generation, txn
                    )
                except (ValueError, KeyError, TypeError) as exc:  # a changed parent's records unreadable
                    logger.warning("%s: cannot catch up (%s); reloading from the store", self.path, exc)
                    caught_up = False  # what was applied of it is replaced below
                if caught_up:
                    if isinstance(self.index, MilvusChunkIndex):
                        self.index.recount()
                    self._generation = generation
                else:
                    self._reload(txn)
        return self._generation

    def verify(self) -> VerifyReport:
        """Check every invariant (``crossscale verify``); changes nothing.

        The store is checked in one snapshot; the index in memory must hold exactly the stored chunks; the
        index file must be readable and not ahead of the store.
        """
        self.check_open()
        self._clean()
        problems: list[str] = []
        notes: list[str] = []
        with self.store.snapshot() as txn:
            problems += self.store.check(txn)
            stored = self.store.vector_ids(txn)
            generation = self.store.generation_at(txn)
            parents = self.store.parent_count(txn)
            if generation == self._generation:  # the map against the very snapshot the index is compared with
                problems += _check_parent_map(self.parents, self.store, txn)
        shared = isinstance(self.index, MilvusChunkIndex)
        if generation == self._generation:
            listed = self.index.ids()
            in_index = np.unique(listed)  # sorted arrays: 8 bytes an id, where sets took ~70
            if len(in_index) != len(listed):
                problems.append(f"chunk index holds {len(listed) - len(in_index)} chunk(s) more than once")
            if not np.array_equal(in_index, stored):
                found = (
                    f"chunk index disagrees with the store: {len(np.setdiff1d(in_index, stored))} vector(s) of no "
                    f"stored chunk, {len(np.setdiff1d(stored, in_index))} stored chunk(s) not indexed"
                )
                if shared and self.readonly:  # the writer updates the collection just after each store commit
                    notes.append(f"{found} (a writer may be between the two; verify from the writer to be sure)")
                else:
                    problems.append(found)
        else:
            notes.append(f"a writer committed since this reader loaded (generation {self._generation} -> {generation})")
        if isinstance(self.index, MilvusChunkIndex):
            committed = self.index.committed_generation()
            if committed > generation:
                problems.append(
                    f"the Milvus collection records generation {committed}, ahead of the store's {generation}; "
                    "`crossscale repair` rebuilds it"
                )
            elif committed < 0:
                notes.append("the Milvus collection records no generation: a writer rebuilds it from the store")
            elif committed < generation:
                notes.append(
                    f"the Milvus collection's recorded generation is {generation - committed} change(s) behind: "
                    "a writer catches it up (or records it) when it saves"
                )
        else:
            without = "it is rebuilt from the store on open"
            _check_derived_file(
                self.path / INDEX_FILE, "index", ChunkIndex.check_file, generation, without, problems, notes
            )
        without = "opening reads the parents from the store (a writer's save writes it)"
        _check_derived_file(
            self.path / PARENTS_FILE, "parent map", ParentMap.check_file, generation, without, problems, notes
        )
        if self.config.verifier_name is not None:
            with self.store.snapshot() as txn:
                missing = self.store.parent_count(txn) - self.store.local_count(txn)
            if missing:
                notes.append(f"{missing} parent(s) have no local features (extraction failed): they are never verified")
        leftovers = sorted(p.name for p in self.path.glob("*" + TEMP_SUFFIX))
        if leftovers:
            notes.append(f"leftover temporary files (removed by the next writer): {', '.join(leftovers)}")
        return VerifyReport(
            ok=not problems,
            problems=tuple(problems),
            notes=tuple(notes),
            parents=parents,
            chunks=len(stored),
            indexed=len(self.index),
            generation=generation,
        )

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Save the index (writer), close the store and release the lock. Idempotent.

        A writer's index is saved as :meth:`save` saves it: an ``"auto"`` index the collection has outgrown is
        migrated first, also when this session added nothing (a migration a crash interrupted is done now).
        """
        if self._closed:
            return
        try:
            if self._lock is not None:
                self._write_index()
        finally:
            try:
                self.store.close()
                if isinstance(self.index, MilvusChunkIndex):
                    self.index.close()
            finally:
                if self._lock is not None:
                    self._lock.release()
                self._closed = True


# ====================================================================== persistence of the derived index
#: chunks whose map entries :func:`_check_parent_map` compares with the store's at once (a few MB of arrays)
_MAP_CHECK_CHUNKS = 1 << 16


def _check_parent_map(parents: ParentMap, store: RootStore, txn: Any) -> list[str]:
    """Problems of the in-memory parent map against the store as ``txn`` sees it: it must map every stored chunk
    to its parent, with the chunk details the store keeps. Parents are compared :data:`_MAP_CHECK_CHUNKS` chunks
    at a time (:func:`_map_disagreements`)."""
    counts = np.zeros(3, np.int64)  # parents with unmapped chunks, with chunks mapped to another, other details
    known = 0
    batch: list[tuple[str, list[int], ChunkDetails]] = []
    chunks = 0
    for item in store.parent_details(txn):
        known += item[0] in parents
        if item[1]:  # a parent without chunks maps nothing, rightly
            batch.append(item)
            chunks += len(item[1])
        if chunks >= _MAP_CHECK_CHUNKS:
            counts += _map_disagreements(parents, batch)
            batch, chunks = [], 0
    if batch:
        counts += _map_disagreements(parents, batch)
    unmapped, misplaced, wrong = (int(c) for c in counts)
    gone = len(parents) - known
    if not (unmapped or misplaced or gone or wrong):
        return []
    return [
        f"parent map disagrees with the store: {unmapped} parent(s) with unmapped chunks, {misplaced} with chunks "
        f"mapped to another parent, {gone} mapped parent(s) no longer stored, {wrong} with other chunk details"
    ]


def _map_disagreements(parents: ParentMap, batch: Sequence[tuple[str, list[int], ChunkDetails]]) -> np.ndarray:
    """How many of ``batch``'s stored parents (each with chunks) the map disagrees with, each counted once, in this
    order: ``[with a chunk it does not map, with a chunk it maps to another parent, with chunk details other than
    the stored ones]`` (kinds, boxes where known, labels), worked out for all their chunks at once."""
    sizes = np.array([len(chunk_ids) for _, chunk_ids, _ in batch], np.int64)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    ids = np.concatenate([np.asarray(chunk_ids, np.int64) for _, chunk_ids, _ in batch])
    codes = parents.parent_codes(ids)
    own = np.repeat(np.array([parents.code_of(parent_id) for parent_id, _, _ in batch], np.int64), sizes)
    unmapped = np.logical_or.reduceat(codes < 0, starts)
    misplaced = ~unmapped & np.logical_or.reduceat(codes != own, starts)
    mapped = parents.details(ids)
    kinds = np.concatenate([stored.kinds for _, _, stored in batch])
    known = np.concatenate([stored.known for _, _, stored in batch])
    boxes = np.concatenate([stored.boxes for _, _, stored in batch])
    names = np.array([name for _, _, stored in batch for name in stored.label_names()], dtype=object)
    differs = (mapped.kinds != kinds) | (known & (mapped.boxes != boxes).any(axis=1))
    differs |= np.array(mapped.label_names(), dtype=object) != names
    wrong = ~unmapped & ~misplaced & np.logical_or.reduceat(differs, starts)
    return np.array([unmapped.sum(), misplaced.sum(), wrong.sum()], np.int64)


def _check_derived_file(
    file: Path,
    what: str,
    check_file: Callable[[Path], Mapping[str, Any]],
    generation: int,
    without: str,
    problems: list[str],
    notes: list[str],
) -> None:
    """Append to ``problems`` and ``notes`` what is wrong with the ``what`` file (the chunk index's, the parent
    map's) against store ``generation``: it must be readable (``check_file`` streams it through its checksum,
    loading nothing) and not ahead of the store. It is derived from the store: missing (``without`` says what
    happens then) or behind, it is a note."""
    if not file.exists():
        notes.append(f"no {what} file: {without}")
        return
    try:
        saved = int(check_file(file).get("generation", -1))
    except (WorkspaceFormatError, OSError, ValueError, TypeError) as exc:
        problems.append(f"{what} file is unreadable ({exc}); `crossscale repair` rewrites it")
        return
    if saved > generation:
        problems.append(f"{what} file is ahead of the store (generation {saved} > {generation})")
    elif saved < generation:
        notes.append(f"{what} file is {generation - saved} change(s) behind: caught up on open")


def _is_unfinished(root: Path) -> bool:
    """Empty, or holding only what a creation killed before writing workspace.json leaves behind."""
    return all(
        p.name in (LOCK_FILE, STORE_DIR, DEFAULT_LITE_FILE) or p.name.endswith(TEMP_SUFFIX) for p in root.iterdir()
    )


def preload_store(path: str | os.PathLike[str], *, progress: bool = False) -> int:
    """:meth:`RootStore.preload` of the workspace at ``path`` without opening the rest of it (no index, no model):
    the store read once into the OS's page cache for the processes that open the workspace later; the bytes read.

    Raises:
        WorkspaceError: ``path`` holds no workspace, or its store cannot be read.
    """
    root = Path(path)
    if not (root / CONFIG_FILE).is_file():
        raise WorkspaceError(f"{root}: not a crossscale workspace (no {CONFIG_FILE})")
    config = _read_config(root / CONFIG_FILE)
    store = RootStore(root / STORE_DIR, dim=config.dim, readonly=True)
    try:
        return store.preload(progress=progress)
    finally:
        store.close()


def _read_config(path: Path) -> WorkspaceConfig:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WorkspaceFormatError(f"{path}: unreadable workspace config: {exc}") from exc
    return WorkspaceConfig.from_json(doc, str(path))


def _rebuild(store: RootStore, config: WorkspaceConfig, device: str, txn: Any) -> ChunkIndex:
    """A new index of every vector in the store as ``txn`` sees it."""
    total = store.chunk_count(txn)
    try:
        plan = config.index_plan(total)
    except ConfigurationError as exc:  # the store outgrew the budget since: still open it, and say so
        plan = choose_index(total, config.dim, 1 << 62, reduce_dim=config.reduce_dim)
        logger.warning("%s; building %s anyway", exc, plan.factory)
    index = _new_index(config.dim, plan, device)
    if not index.is_trained and total:  # IVF/PQ: train on a sample of what is stored, read in a pass of its own
        index.train(_training_sample(store, txn, total, plan.train_size))
    for ids, vecs in store.iter_vectors(txn=txn):  # then filled batch by batch: memory bounded by the index
        index.add(vecs, ids)
    return index


def _training_sample(store: RootStore, txn: Any, total: int, size: int) -> np.ndarray:
    """``size`` of the ``total`` stored vectors (a fixed random choice; all of them for ``size`` 0 or more than
    ``total``), read batch by batch so that only the sample is held."""
    if size and total > size:
        rows = np.sort(np.random.default_rng(0).choice(total, size, replace=False))
    else:
        rows = np.arange(total)
    parts: list[np.ndarray] = []
    seen = 0
    for _, vecs in store.iter_vectors(txn=txn):
        lo, hi = np.searchsorted(rows, [seen, seen + len(vecs)])
        parts.append(vecs[rows[lo:hi] - seen])
        seen += len(vecs)
    return np.concatenate(parts) if parts else np.zeros((0, store.dim), np.float32)


def _index_add(index: AnyChunkIndex, vectors: np.ndarray, ids: np.ndarray, parent_ids: Sequence[str]) -> None:
    """Add vectors to either kind of index; a Milvus collection keeps each one's parent id for grouped search."""
    if isinstance(index, MilvusChunkIndex):
        index.add(vectors, ids, groups=parent_ids)
    else:
        index.add(vectors, ids)


def _catch_up(store: RootStore, index: AnyChunkIndex | None, parents: ParentMap | None, base: int, txn: Any) -> bool:
    """Replay the store's changes after generation ``base`` into ``index`` and ``parents`` (each if given); False
    if the log is gone (then both must be rebuilt)."""
    changes = store.changes_since(base, txn=txn)
    if changes is None:
        return False
    for _, added, removed in changes:
        records: dict[int, ChunkRecord] = {}
        if parents is not None or isinstance(index, MilvusChunkIndex):
            records = store.chunk_records(added, txn=txn)
        owner_of = {cid: record.parent_id for cid, record in records.items()}
        if index is not None:
            index.remove(removed)
            ids, vecs = store.vectors(added, txn=txn)
            if isinstance(index, MilvusChunkIndex):  # a vector whose record is unreadable has no parent to group by
                known = np.asarray([int(i) in owner_of for i in ids], dtype=bool)
                index.add(vecs[known], ids[known], groups=[owner_of[int(i)] for i in ids[known]])
            else:
                index.add(vecs, ids)
        if parents is None:
            continue
        for code in np.unique(parents.parent_codes(np.asarray(removed, np.int64))):
            if code >= 0:  # a parent's chunks leave together: its deletion
                parents.remove(parents.parent_id(int(code)))
        owners: dict[str, list[int]] = {}
        for cid, parent_id in owner_of.items():
            owners.setdefault(parent_id, []).append(cid)
        parents.add_many(
            (parent_id, ids, _details_of([records[cid] for cid in ids])) for parent_id, ids in owners.items()
        )
    if changes:
        what = " and ".join(
            name for name, part in (("the chunk index", index), ("the parent map", parents)) if part is not None
        )
        logger.info("caught %s up by %d store change(s)", what, len(changes))
    return True


def _details_of(records: list[ChunkRecord]) -> ChunkDetails:
    """The details of these records; unknown if one is unreadable (its searches then read the records, and
    ``verify()`` reports it)."""
    try:
        return ChunkDetails.of(records)
    except ValueError as exc:
        logger.warning("chunk records of parent %r are unreadable (%s)", records[0].parent_id, exc)
        return ChunkDetails.unknown(len(records))


class _OnDisk(NamedTuple):
    """Whether the index file and the parent map file hold what was just loaded (or written) at its generation."""

    index_file: bool
    parents_file: bool


def _load_parents(root: Path, store: RootStore, txn: Any, generation: int) -> tuple[ParentMap, bool]:
    """The parent map at the generation ``txn`` sees: its file caught up through the store's log, else (no file,
    unreadable, the log pruned past it, or counts that disagree) built from every parent's record; and whether
    the file held it already (nothing to catch up)."""
    file = root / PARENTS_FILE
    if file.exists():
        try:
            parents, meta = ParentMap.load(file)
            base = int(meta.get("generation", -1))
        except (WorkspaceFormatError, OSError, ValueError, TypeError) as exc:
            logger.warning("%s is unreadable (%s); rebuilding the parent map from the store", file, exc)
        else:
            try:
                current = 0 <= base <= generation and _catch_up(store, None, parents, base, txn)
            except (ValueError, KeyError, TypeError) as exc:  # a changed parent's records unreadable
                logger.warning("%s cannot be caught up (%s); rebuilding the parent map from the store", file, exc)
                current = False
            if current and len(parents) == store.parent_count(txn) and parents.chunk_count == store.chunk_count(txn):
                return parents, base == generation
            logger.info(
                "%s (generation %d) cannot be caught up to %d; rebuilding it from the store", file, base, generation
            )
    return ParentMap.from_parents(store.parent_details(txn)), False


def _load_index(
    root: Path, store: RootStore, config: WorkspaceConfig, device: str, readonly: bool
) -> tuple[ChunkIndex, ParentMap, int, _OnDisk]:
    """The chunk index and the parent map, consistent with the store at one point in time, that generation, and
    whether their files hold them (a writer saves what they did not).

    Everything is read in one LMDB snapshot, so a writer in another process cannot make it mix states.
    """
    file = root / INDEX_FILE
    index: ChunkIndex | None = None
    base = 0
    from_file = file.exists()  # and then read, or the index is rebuilt
    if from_file:
        try:
            index, meta = ChunkIndex.load(file, device=device)
            base = int(meta.get("generation", -1))
        except (WorkspaceFormatError, OSError, ValueError, KeyError) as exc:
            logger.warning("%s is unreadable (%s); rebuilding it from the store", file, exc)
            index = None
    else:
        index = _new_index(config.dim, config.index_plan(0), device)
    with store.snapshot() as txn:
        generation = store.generation_at(txn)
        parents, parents_saved = _load_parents(root, store, txn, generation)
        current = index is not None and 0 <= base <= generation and _catch_up(store, index, None, base, txn)
        if not current or index is None:
            logger.info("rebuilding the chunk index of %s from the store", root)
            index = _rebuild(store, config, device, txn)
        elif len(index) != store.chunk_count(txn):
            logger.warning("chunk index holds %d vectors, the store %d; rebuilding", len(index), store.chunk_count(txn))
            index = _rebuild(store, config, device, txn)
            current = False
    index_saved = from_file and current and base == generation
    if not readonly and not index_saved:
        parents_saved = _save_index(root, store, index, parents, generation)
        index_saved = True
    elif not readonly and not parents_saved:
        parents_saved = _save_parents(root, parents, generation)
    return index, parents, generation, _OnDisk(index_saved, parents_saved)


def _open_backend(root: Path, config: WorkspaceConfig, *, new: bool, readonly: bool) -> MilvusChunkIndex:
    """Connect to the workspace's Milvus collection; a writer creates it if absent, a reader never does.

    Raises:
        MissingDependencyError: pymilvus (or milvus-lite) is not installed.
        WorkspaceError: Milvus cannot be reached, the Lite file is in use by another process, the collection is
            not a chunk index or is missing (reader), or a *new* workspace names a collection that holds vectors
            (another workspace's, most likely: it is never overwritten).
    """
    target = parse_milvus_factory(config.index_factory)
    if target.collection is None:
        raise WorkspaceFormatError(f"{root}: the Milvus index factory {config.index_factory!r} names no collection")
    try:
        index = MilvusChunkIndex(
            config.dim,
            target.connect_uri(root),
            target.collection,
            token=os.environ.get(MILVUS_TOKEN_ENV, ""),
            create=not readonly,
        )
    except ChunkIndexError as exc:
        hint = " (open the workspace for writing, or run `crossscale repair`, to rebuild it)" if readonly else ""
        raise WorkspaceError(f"{root}: cannot open its chunk index: {exc}{hint}") from exc
    if new and len(index):
        index.close()
        raise WorkspaceError(
            f"{root}: Milvus collection {target.collection!r} at {target.uri} already holds vectors, perhaps of "
            "another workspace; name another collection (index_factory='milvus...#name') or drop that one"
        )
    return index


def _sync_backend(store: RootStore, index: MilvusChunkIndex, txn: Any, *, full: bool = False) -> bool:
    """Bring a Milvus collection to the store as ``txn`` sees it (the writer only): replay the changes since its
    last commit, or refill it from the stored vectors when the log does not reach back, the counts disagree
    after, or ``full``. True if it was caught up, False if refilled."""
    generation = store.generation_at(txn)
    base = index.committed_generation()
    current = not full and 0 <= base <= generation and _catch_up(store, index, None, base, txn)
    if current and len(index) == store.chunk_count(txn):
        return True
    if current:  # the log replayed, yet the counts disagree: someone else changed the collection
        logger.warning(
            "the Milvus collection %s holds %d vectors, the store %d; rebuilding it",
            index.collection,
            len(index),
            store.chunk_count(txn),
        )
    elif not full:
        logger.info("rebuilding the Milvus collection %s from the store", index.collection)
    index.reset()
    parents = ParentMap.from_parents(store.parent_chunks(txn))
    for ids, vecs in store.iter_vectors(txn=txn):
        codes = parents.parent_codes(ids)
        keep = codes >= 0
        index.add(vecs[keep], ids[keep], groups=[parents.parent_id(int(c)) for c in codes[keep]])
    return False


def _load_backend(
    root: Path, store: RootStore, index: MilvusChunkIndex, readonly: bool
) -> tuple[MilvusChunkIndex, ParentMap, int, _OnDisk]:
    """A Milvus collection made current with the store (by a writer), the parent map, the store generation, and
    whether the parent map file holds it (the collection has no file: its state is never known to be saved).

    A reader never writes to the collection: one left behind by a killed writer is searched as it is, with a
    warning, until a writer opens the workspace.
    """
    with store.snapshot() as txn:
        generation = store.generation_at(txn)
        parents, parents_saved = _load_parents(root, store, txn, generation)
        base = index.committed_generation()
        if readonly:
            if base != generation:
                logger.warning(
                    "%s: the Milvus collection records store generation %d, the store is at %d; searches may miss "
                    "or skip recent changes until a writer opens the workspace",
                    root,
                    base,
                    generation,
                )
            return index, parents, generation, _OnDisk(False, parents_saved)
        caught_up = _sync_backend(store, index, txn)
    if not caught_up or base != generation:
        parents_saved = _save_index(root, store, index, parents, generation)
    elif not parents_saved:
        parents_saved = _save_parents(root, parents, generation)
    return index, parents, generation, _OnDisk(False, parents_saved)


def _save_index(root: Path, store: RootStore, index: AnyChunkIndex, parents: ParentMap, generation: int) -> bool:
    """Write the parent map's file, then the index's (or commit a Milvus collection), both at ``generation``;
    then prune the store's log up to it. True if the parent map was written too (a failure there is logged:
    the next open rebuilds the map from the store).

    Each file is replaced atomically and names its generation: a kill between the two leaves files that opening
    catches up from the log, which is pruned only after both.

    Raises:
        WorkspaceError: the index could not be written (the store is intact).
    """
    parents_saved = _save_parents(root, parents, generation)
    if isinstance(index, MilvusChunkIndex):
        index.commit(generation)  # a ChunkIndexError leaves the log unpruned: the next writer catches up from it
        store.prune_log(generation)
        return parents_saved
    try:
        index.save(root / INDEX_FILE, {"generation": generation})
    except OSError as exc:
        raise WorkspaceError(
            f"{root}: cannot save the chunk index ({exc.strerror or exc}); the store is intact and "
            "the index will be caught up from it when the workspace is next opened"
        ) from exc
    store.prune_log(generation)
    return parents_saved


def _save_parents(root: Path, parents: ParentMap, generation: int) -> bool:
    """Write the parent map's file at ``generation``; False (logged) if it cannot be written: it is derived, and
    opening without it reads the parents from the store instead."""
    try:
        parents.save(root / PARENTS_FILE, {"generation": generation})
    except OSError as exc:
        logger.warning(
            "%s: cannot save the parent map (%s); the next open reads it from the store",
            root,
            exc.strerror or exc,
        )
        return False
    return True


def _growth_key(factory: str, reduce_dim: int | None) -> tuple[int, int, int, int]:
    """Orders the structures ``choose_index`` picks by the collection size they serve: projected vectors after
    whole ones (a projection is learned once there are enough vectors), then Flat < IVF-Flat < IVF-SQ8 < IVF-PQ,
    more lists, fewer PQ bytes. Saving migrates only upwards; ``rebuild_index()`` picks afresh."""
    reduced = 0 if reduce_dim is None else 1
    m = re.fullmatch(r"IVF(\d+)(?:_HNSW32)?,(Flat|SQ8|PQ(\d+))", factory)
    if m is None:
        return (reduced, 0, 0, 0)
    if m.group(3) is not None:
        return (reduced, 3, int(m.group(1)), -int(m.group(3)))
    return (reduced, 1 if m.group(2) == "Flat" else 2, int(m.group(1)), 0)


def _new_index(dim: int, plan: IndexPlan, device: str) -> ChunkIndex:
    index = ChunkIndex(dim, plan.factory, reduce_dim=plan.reduce_dim, device=device)
    if plan.search_params is not None:
        index.set_search_params(plan.search_params)  # this index's own setting, saved with it
    return index


def new_config(
    *,
    encoder_name: str,
    dim: int,
    encoder_spec: ComponentSpec | None,
    segmenter_name: str | None,
    segmenter_spec: ComponentSpec | None,
    index_factory: str,
    verifier_name: str | None = None,
    verifier_spec: ComponentSpec | None = None,
    max_memory: str | int | None = None,
    vector_dtype: str = "float32",
    reduce_dim: int | None = None,
) -> WorkspaceConfig:
    """A new workspace's config: format 2 with a verifier, an ``"auto"`` index or float16 vectors, else 1."""
    if not isinstance(index_factory, str) or not index_factory.strip():
        raise ConfigurationError(
            f"index_factory must be 'auto', a faiss factory string or a Milvus URI ('milvus', 'milvus://host:port'), "
            f"got {index_factory!r}"
        )
    milvus = is_milvus_factory(index_factory)
    if milvus:  # recorded with its collection name, so that many workspaces can share one server
        index_factory = parse_milvus_factory(index_factory).named().factory
    if max_memory is not None and index_factory != AUTO_INDEX:
        raise ConfigurationError(f"max_memory only applies to index_factory='auto', not {index_factory!r}")
    if reduce_dim is not None and index_factory != AUTO_INDEX:
        raise ConfigurationError(
            f"reduce_dim only applies to index_factory='auto', not {index_factory!r} (a faiss string can name its "
            "own transform, e.g. 'PCA256,IVF1024,Flat')"
        )
    check_reduce_dim(reduce_dim, int(dim))
    budget = parse_memory(max_memory if max_memory is not None else DEFAULT_MAX_MEMORY)
    if vector_dtype not in VECTOR_DTYPES:
        raise ConfigurationError(f"vector_dtype must be one of {sorted(VECTOR_DTYPES)}, got {vector_dtype!r}")
    return WorkspaceConfig(
        encoder_name=encoder_name,
        dim=int(dim),
        encoder_spec=encoder_spec,
        segmenter_name=segmenter_name,
        segmenter_spec=segmenter_spec,
        index_factory=index_factory,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        verifier_name=verifier_name,
        verifier_spec=verifier_spec,
        format=1
        if verifier_name is None and index_factory != AUTO_INDEX and not milvus and vector_dtype == "float32"
        else 2,
        vector_dtype=vector_dtype,
        max_memory=budget if index_factory == AUTO_INDEX else None,
        reduce_dim=reduce_dim,
    )

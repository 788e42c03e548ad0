"""The facade: composes a segmenter, an encoder, a ranker, a verifier and a refiner around a workspace.

It decides nothing itself. Indexing runs :func:`crossscale.ingest.ingest`; searching runs
:func:`crossscale.query.search_parents`; the workspace owns the files, the lock, the store and the index.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from crossscale._checks import int_at_least, number_in, positive_int
from crossscale._device import validate_device
from crossscale._files import SaveSchedule
from crossscale._forward import Forward
from crossscale._images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from crossscale._stages import (
    DEFAULT_ENCODER,
    DEFAULT_SEGMENTER,
    DEFAULT_VERIFIER,
    ENCODERS,
    SEGMENTERS,
    VERIFIERS,
    StageRequest,
)
from crossscale._vectors import embed_text, l2_normalize
from crossscale.errors import (
    CapabilityError,
    ConfigurationError,
    ParentNotFoundError,
    VectorError,
    WorkspaceError,
    WorkspaceFormatError,
)
from crossscale.index import KeypointIndex, RootStore
from crossscale.index.root_store import ParentRecord
from crossscale.ingest import ingest, iter_inputs
from crossscale.protocols import (
    DescriptorVerifier,
    Encoder,
    MapEncoder,
    Ranker,
    Refiner,
    Segmenter,
    TextEncoder,
    Verifier,
    check_stage,
)
from crossscale.query import FetchDepth, embed_queries, search_parents, voted_matches
from crossscale.rank import MapRefiner, ParentRanker, RegionRefiner
from crossscale.segment import create_segmenter
from crossscale.types import (
    IndexReport,
    ParentMatch,
    Query,
    SearchMeasurement,
    SearchParams,
    SearchResult,
    SearchTuning,
)
from crossscale.workspace import (
    KEYPOINT_FILE,
    WORKSPACE_FORMAT,
    AnyChunkIndex,
    VerifyReport,
    Workspace,
    WorkspaceConfig,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_SEGMENTER",
    "DEFAULT_VERIFIER",
    "LOCAL_SEARCH_MAX_PARENTS",
    "TUNING_RESCORE_PER_PARENT",
    "WORKSPACE_FORMAT",
    "CrossScaleSearch",
    "LocalCandidates",
    "VectorsOnly",
    "VerifyReport",
    "default_refiner",
]


#: the hits per parent that :meth:`CrossScaleSearch.tune_search`'s own grid re-scores in its ``rescore_per_parent``
#: settings: at 10M alike regions, re-scoring each parent's first 2 hits ranked the parents of 1,000 queries as
#: re-scoring all 160 did (1 per parent: 982 of 1,000 the same; docs/benchmarks.md)
TUNING_RESCORE_PER_PARENT = 2
#: ``local_search=None`` (the default) turns local search on for a workspace whose verifier has descriptors
#: (``"sift"``) while it holds at most this many parents: its keypoint index takes ~0.19 MB of RAM per parent with
#: ``"sift"`` (~1.9 GB here), which ``max_memory`` does not budget. Above it, pass ``local_search=True``.
LOCAL_SEARCH_MAX_PARENTS = 10_000
#: the keypoint index's RAM per parent with the ``"sift"`` verifier's defaults (its 4-bit codes and ids), in GB
_LOCAL_GB_PER_PARENT = 0.19e-3


def default_refiner(encoder: Encoder) -> Refiner:
    """The refiner ``refine=True`` builds: a :class:`~crossscale.rank.MapRefiner` if ``encoder`` can pool boxes
    from one pass (:class:`~crossscale.protocols.MapEncoder`, e.g. ``"efficientnet-lite0"``), else a
    :class:`~crossscale.rank.RegionRefiner`. On the quality benchmark both gave the same figures, the map
    refiner at under half the query time of a refined search (docs/benchmarks.md)."""
    return MapRefiner(encoder) if isinstance(encoder, MapEncoder) else RegionRefiner(encoder)


class VectorsOnly:
    """The encoder of a workspace reopened with ``encoder=False``: its recorded name and dimension, and no model.
    Searching by vectors (:meth:`CrossScaleSearch.search_vectors`, ``measure_search``, ``tune_search``) needs no
    more; anything that would embed an image or a text raises :class:`CapabilityError`."""

    def __init__(self, name: str, dim: int) -> None:
        self.name = name
        self.dim = dim

    def __repr__(self) -> str:
        return f"VectorsOnly(name={self.name!r}, dim={self.dim})"

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Raises :class:`CapabilityError`: there is no model to embed ``images`` with."""
        raise CapabilityError(self.refusal("embedding images"))

    def refusal(self, what: str) -> str:
        """Why ``what`` cannot be done: the message of the :class:`CapabilityError` raised for it."""
        return (
            f"{what} needs the workspace's encoder {self.name!r}, and this workspace was opened with encoder=False "
            "(search_vectors, measure_search and tune_search only); reopen it without encoder=False"
        )


class LocalCandidates:
    """Parents found by their local features, for the verifier to confirm (``CrossScaleSearch(local_search=True)``).

    Holds every parent's descriptors (what the workspace's verifier stored, as its ``descriptors`` reads them) in a
    :class:`~crossscale.index.KeypointIndex`, kept in step with the store (parents added or deleted since are
    added or dropped before a search, :meth:`update`). For a query, the ``top_n`` parents with the most votes (at
    least ``min_votes``) that the vector search did not return become matches, each as the ranker makes it from all
    of the parent's chunks scored exactly.

    The keypoint index is derived from the store, like the chunk index: a writer keeps it in the workspace's
    ``keypoints.index`` (:meth:`save`; the facade saves it at ``save()``, on ``close()``, and after an ``index()``
    call when :attr:`save_schedule` finds a write due), with the store generation and the parents it reflects,
    and loads it at the first search,
    then catches it up with the store's parents. A missing or unreadable file is rebuilt from the stored features
    (with a warning if unreadable); a kill while it is written leaves the old file (it is replaced atomically).
    ``persist=False``: built in RAM at the first search, never written.
    """

    def __init__(
        self,
        workspace: Workspace,
        verifier: DescriptorVerifier,
        *,
        top_n: int = 5,
        min_votes: int = 3,
        progress: bool = False,
        persist: bool = True,
    ) -> None:
        self.workspace = workspace
        self.verifier = verifier
        self.progress = progress
        self.persist = persist
        self.top_n = positive_int("top_n", top_n)
        self.min_votes = positive_int("min_votes", min_votes)
        self.index: KeypointIndex | None = None
        self._generation = -1  # the store generation the index reflects (-1: compare with the store's parents)
        self._written = False  # whether the file holds what is in memory
        self._looked = not persist  # whether the file was looked for
        self._marks: dict[str, int] = {}  # parents looked at (held, or without usable features): first chunk id
        self._lock = threading.RLock()
        #: when :meth:`save_if_due` rewrites the keypoint index file after ingest work
        self.save_schedule = SaveSchedule.for_file(self.file)

    def __repr__(self) -> str:
        return f"LocalCandidates(top_n={self.top_n}, min_votes={self.min_votes}, index={self.index!r})"

    @property
    def file(self) -> Path:
        """Where a writer keeps the keypoint index: ``keypoints.index`` in the workspace."""
        return self.workspace.path / KEYPOINT_FILE

    def candidates(self, query: Query, ranked: AbstractSet[str], ranker: Ranker) -> list[ParentMatch]:
        """Matches for the best-voted parents of ``query`` not in ``ranked``."""
        if query.image is None:
            return []
        mine = self.verifier.query_descriptors(query)
        with self._lock:
            index = self._current()
            if not len(mine) or index.descriptor_count == 0:
                return []
            votes = index.vote(mine, self.top_n + len(ranked)) if mine.shape[1] == index.dim else []
        return voted_matches(
            query,
            votes,
            ranked,
            chunk_ids=self._chunk_ids,
            vectors=self.workspace.store.vectors,
            records=self.workspace.records,
            ranker=ranker,
            top_n=self.top_n,
            min_votes=self.min_votes,
        )

    def update(self) -> KeypointIndex:
        """The keypoint index, loaded (or built) if it was not, and brought up to date with the store's parents."""
        with self._lock:
            return self._current()

    def save(self) -> None:
        """Write the keypoint index to :attr:`file` if it is in memory and differs from what the file holds
        (brought up to date with the store first). Nothing for a reader, or with ``persist=False``.

        Raises:
            WorkspaceError: the file cannot be written (the store is intact; the next writer rebuilds or catches
                up the keypoint index).
        """
        if not self.persist or self.workspace.readonly:
            return
        with self._lock:
            if self.index is None:  # never loaded nor built in this process: the file is what it was
                return
            index = self._current()
            if self._written:
                return
            started = time.perf_counter()
            try:
                index.save(self.file, {"generation": self._generation, "marks": self._marks})
            except OSError as exc:
                raise WorkspaceError(
                    f"{self.workspace.path}: cannot save the keypoint index ({exc.strerror or exc}); the store is "
                    "intact and the keypoint index will be caught up from it"
                ) from exc
            self._written = True
            self.save_schedule.wrote(time.perf_counter() - started)
            logger.debug("keypoint index saved at generation %d", self._generation)

    def save_if_due(self, work_seconds: float) -> bool:
        """:meth:`save`, if :attr:`save_schedule` finds a write due after ``work_seconds`` more of ingest; True if
        it was due. What is not written yet is caught up from the store by the next search of any process."""
        if not self.save_schedule.due(work_seconds, what="keypoint index file"):
            return False
        self.save()
        return True

    def rebuild(self) -> None:
        """Build the keypoint index afresh from the stored features, and save it (``crossscale repair``)."""
        with self._lock:
            self.index, self._marks, self._generation, self._written, self._looked = None, {}, -1, False, True
            self._current()
            self.save()

    def check(self) -> tuple[list[str], list[str]]:
        """``(problems, notes)`` about :attr:`file` for ``verify()``: it must be readable, consistent, not ahead of
        the store, and hold for each parent it reflects as many descriptors as the verifier reads from the
        parent's stored features. Parents changed since it was written are a note (caught up at the next search).
        Changes nothing; reads every stored feature."""
        file = self.file
        if not file.exists():
            return [], ["no keypoint index file: local search builds it from the stored features"]
        repair = "`crossscale repair` rebuilds it"
        try:
            index, saved, marks = _read_file(file)  # its checksum checked as it is read
        except _UNREADABLE as exc:
            return [f"keypoint index file is unreadable ({exc}); {repair}"], []
        problems = index.check()
        store = self.workspace.store
        with store.snapshot() as txn:
            generation = store.generation_at(txn)
            stored = _first_chunks(store, txn)
        if saved > generation:
            problems.append(f"keypoint index file is ahead of the store (generation {saved} > {generation})")
        unmarked = [p for p in index.parent_ids() if p not in marks]
        if unmarked:
            problems.append(f"keypoint index holds {len(unmarked)} parent(s) it records no mark for")
        current = [p for p, mark in marks.items() if stored.get(p) == mark]
        wrong = [p for p in current if index.count(p) != self._usable(p, store.local_features(p))[1]]
        if wrong:
            problems.append(
                f"keypoint index holds other descriptors than the stored features of {len(wrong)} parent(s), "
                f"e.g. {wrong[0]!r}"
            )
        behind = len(stored) - len(current) + len(marks) - len(current)
        notes = []
        if behind:
            notes.append(f"keypoint index file is {behind} parent change(s) behind: caught up at the next local search")
        return [f"{p}; {repair}" for p in problems], notes

    # ------------------------------------------------------------------ internals
    def _chunk_ids(self, parent_id: str) -> tuple[int, ...] | None:
        try:
            return self.workspace.store.parent(parent_id).chunk_ids
        except ParentNotFoundError:  # deleted since the last sync
            return None

    def _usable(self, parent_id: str, raw: bytes | None) -> tuple[np.ndarray | None, int]:
        """The verifier's descriptors of a parent's stored features and their count, or ``(None, 0)`` if there are
        none (no features stored, unreadable ones, or no keypoint found: e.g. a flat image)."""
        try:
            if raw is None:
                raise ValueError("none stored")
            rows = self.verifier.descriptors(raw)
            if np.ndim(rows) != 2 or 0 in np.shape(rows):
                raise ValueError(f"no descriptors (shape {np.shape(rows)})")
            return rows, int(np.shape(rows)[0])
        except ValueError as exc:
            logger.debug("parent %r: no usable local features (%s); not searchable by them", parent_id, exc)
            return None, 0

    def _load(self) -> None:
        """The keypoint index and its marks from :attr:`file`, if it is there and readable (else a warning)."""
        self._looked = True
        if not self.file.exists():
            return
        started = time.perf_counter()
        try:
            index, saved, marks = _read_file(self.file)
            if any(p not in marks for p in index.parent_ids()):
                raise WorkspaceFormatError("it holds parents it records no mark for")
        except _UNREADABLE as exc:
            logger.warning("%s is unreadable (%s); rebuilding it from the stored features", self.file, exc)
            return
        self.index, self._marks, self._written = index, marks, True
        logger.info(
            "keypoint index loaded in %.1f s: %d parents, %d descriptors (generation %d)",
            time.perf_counter() - started,
            len(index),
            index.descriptor_count,
            saved,
        )

    def _current(self) -> KeypointIndex:
        """The keypoint index, brought up to date with the store's parents.

        An interrupt or error half-way through leaves the index in memory out of step with its marks (a parent
        marked and not yet added, or added twice on the next try): it is let go, so that nothing saves it, and
        the next use loads the file again and catches it up."""
        if not self._looked:
            self._load()  # then compared with the store's parents, whatever generation it records
        if self.index is not None and self.workspace.store.generation == self._generation:
            return self.index
        try:
            return self._catch_up()
        except BaseException:
            self.index, self._marks, self._generation, self._looked = None, {}, -1, not self.persist
            raise

    def _catch_up(self) -> KeypointIndex:
        """:meth:`_current`'s work: the store's parents added or deleted since are added to or dropped from the
        index."""
        from tqdm.auto import tqdm

        store = self.workspace.store
        generation = store.generation
        started = time.perf_counter()
        stored = _first_chunks(store)
        gone = [p for p, mark in self._marks.items() if stored.get(p) != mark]
        for pid in gone:
            del self._marks[pid]
            if self.index is not None:
                self.index.remove(pid)
        new = sorted(set(stored).difference(self._marks))
        for pid in tqdm(new, unit="img", disable=not self.progress or len(new) < 100, desc="local features"):
            self._marks[pid] = stored[pid]
            rows, _ = self._usable(pid, store.local_features(pid))
            if rows is None:
                continue
            if self.index is None:
                self.index = KeypointIndex(int(np.shape(rows)[1]))
            try:
                self.index.add(pid, rows)
            except VectorError as exc:
                logger.debug("parent %r: no usable local features (%s); not searchable by them", pid, exc)
        if self.index is None:
            self.index = KeypointIndex()
        self.index.train()
        if gone or new:
            self._written = False
        self._generation = generation
        if new or gone:
            logger.info(
                "local search: %d parents' keypoints added, %d dropped in %.1f s; %d parents, %d descriptors, %.0f MB",
                len(new),
                len(gone),
                time.perf_counter() - started,
                len(self.index),
                self.index.descriptor_count,
                self.index.nbytes / 1e6,
            )
        return self.index


def _local_fits(parents: int) -> bool:
    """Whether default local search suits a workspace of ``parents`` (logs why not)."""
    if parents <= LOCAL_SEARCH_MAX_PARENTS:
        return True
    logger.warning(
        "local search is off: on by default for up to %d parents, this workspace has %d (its keypoint index would "
        "take ~%.1f GB of RAM); open with local_search=True to use it anyway",
        LOCAL_SEARCH_MAX_PARENTS,
        parents,
        parents * _LOCAL_GB_PER_PARENT,
    )
    return False


def _first_chunks(store: RootStore, txn: Any = None) -> dict[str, int]:
    """Each stored parent's first chunk id (-1 if none): a parent's mark, which tells one deleted and indexed again
    under its id since (new chunk ids)."""
    return {pid: (chunks[0] if chunks else -1) for pid, chunks in store.parent_chunks(txn)}


#: what reading a keypoint index file (:func:`_read_file`) raises when the file is unreadable or inconsistent
_UNREADABLE = (WorkspaceFormatError, OSError, KeyError, TypeError, ValueError, AttributeError)


def _read_file(file: Path) -> tuple[KeypointIndex, int, dict[str, int]]:
    """A keypoint index file's index, and the store generation and the parents' marks it records."""
    index, meta = KeypointIndex.load(file)
    marks = meta["marks"]
    if not isinstance(marks, dict):
        raise TypeError(f"marks must be a mapping, got {type(marks).__name__}")
    return index, int(meta["generation"]), {str(p): int(m) for p, m in marks.items()}


class CrossScaleSearch:
    """Index large images, then find the ones that contain a small query image, and where.

    Build it with :meth:`open`; use it as a context manager so that the index is saved and the lock released::

        with CrossScaleSearch.open("ws/", encoder="efficientnet-lite0", segmenter="whole+tiles") as cs:
            report = cs.index("photos/")
            for match in cs.search("query.jpg", top_k=5):
                print(match.parent_id, match.score, match.box)

    Attributes:
        encoder, ranker, refiner: the stages in use; ``ranker`` and ``refiner`` may be replaced at any time by
            any object satisfying :class:`~crossscale.protocols.Ranker` / :class:`~crossscale.protocols.Refiner`
            (``refiner = None`` turns refining off).
        verifier: the workspace's :class:`~crossscale.protocols.Verifier` (recorded; ``None`` if it has none);
            ``verify_matches = False`` stops searches from using it.
        refine_verified: whether the refiner also runs for queries whose best match the verifier confirmed.
        fetch_depth: learns how deep the first index search of a query should go when a parent's chunks are
            alike (:class:`~crossscale.query.FetchDepth`); it changes no result, only the number of searches
            (up to float32 rounding of scores where a batch is scanned list by list), and is used with indexes
            where that holds (``prefix_stable``). ``None`` turns it off.
        rescore: whether the hits of an index whose scores are approximate (SQ8 or PQ codes, projected vectors)
            are scored again against the stored vectors before ranking (``True``, the default: parents ranked by
            their regions' true cosines). ``False`` ranks the index's own scores and reads no stored vector: at
            10M regions, parent recall@10 0.963 instead of 0.983, for 1.2-1.4x the batched throughput
            (docs/benchmarks.md). A call's ``SearchParams(rescore=...)`` overrides it for that call, and
            ``SearchParams(rescore_per_parent=2)`` re-scores each parent's first two hits only (most of the speed
            of not re-scoring, the recall of re-scoring every hit, at 10M regions).
        search_params: the setting every search starts from (:class:`~crossscale.types.SearchParams`): a call's
            ``params`` override it field by field, and a field it leaves ``None`` is the index's own (``rescore``:
            :attr:`rescore`). Unless set on this object, the setting saved with the workspace for its index's
            present structure (:meth:`save_search_params`, e.g. what :meth:`tune_search` chose), else
            ``SearchParams()``.
        workspace: the :class:`~crossscale.workspace.Workspace` on disk.
    """

    def __init__(
        self,
        workspace: Workspace,
        *,
        encoder: Encoder,
        segmenter: Segmenter | None,
        ranker: Ranker,
        refiner: Refiner | None,
        verifier: Verifier | None = None,
        verify_matches: bool = True,
        refine_verified: bool = False,
        local_search: bool | None = None,
        device: str,
        batch_size: int,
        progress: bool,
        max_pixels: int,
    ) -> None:
        self.workspace = workspace
        self.encoder = encoder
        self._segmenter = segmenter
        self.ranker = ranker
        self.refiner = refiner
        self.verifier = verifier
        self.verify_matches = verify_matches
        self.refine_verified = refine_verified
        self.local: LocalCandidates | None = None
        self._local_auto = local_search is None  # on by default: off again if the collection outgrows the limit
        if local_search is None:
            local_search = isinstance(verifier, DescriptorVerifier) and verify_matches and _local_fits(len(workspace))
        if local_search:
            if not isinstance(verifier, DescriptorVerifier):
                raise ConfigurationError(
                    "local_search needs a verifier whose local features can find parents "
                    f"(crossscale.protocols.DescriptorVerifier, e.g. 'sift'); this workspace's verifier is {verifier!r}"
                )
            self.local = LocalCandidates(workspace, verifier, progress=progress)
        self.fetch_depth: FetchDepth | None = FetchDepth()
        self.rescore = True
        self._search_params: SearchParams | None = None  # None: the workspace's saved setting
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self.max_pixels = max_pixels

    # ================================================================== opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: str | Encoder | Literal[False] | None = None,
        segmenter: str | Segmenter | None = None,
        ranker: Ranker | None = None,
        device: str = "auto",
        batch_size: int = 16,
        index_factory: str | None = None,
        encoder_kwargs: Mapping[str, Any] | None = None,
        segmenter_kwargs: Mapping[str, Any] | None = None,
        readonly: bool = False,
        progress: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        map_size: int = 64 << 20,
        refine: bool | Refiner = True,
        verifier: str | Verifier | Literal[False] | None = None,
        verifier_kwargs: Mapping[str, Any] | None = None,
        verify_matches: bool = True,
        refine_verified: bool = False,
        local_search: bool | None = None,
        max_memory: str | int | None = None,
        vector_dtype: str | None = None,
        reduce_dim: int | None = None,
    ) -> CrossScaleSearch:
        """Create the workspace at ``path``, or reopen it.

        Args:
            path: the workspace directory.
            encoder: a built :class:`~crossscale.protocols.Encoder`, or a name for
                :func:`~crossscale.encode.create_encoder` (``"clip"``, ``"efficientnet-lite0"``,
                ``"color-histogram"``). ``None``: the default (``"clip"``) for a new workspace,
                the recorded one when reopening. ``False``: reopen without an encoder, to search by vectors only
                (:meth:`search_vectors`, :meth:`measure_search`, :meth:`tune_search`): no model is loaded (nor
                torch imported by it), a workspace built with an encoder object opens without it, and the refiner
                is off unless one is given (``refine=True`` would re-encode the parents); :meth:`index`,
                :meth:`search` and :meth:`search_text` raise :class:`CapabilityError`
                (:attr:`encoder` is a :class:`VectorsOnly`).
            segmenter: a built :class:`~crossscale.protocols.Segmenter`, or a name for
                :func:`~crossscale.segment.create_segmenter` (``"whole+yolo+tiles"``, ``"whole+tiles"``, ...).
                ``None``: the default for a new workspace, the recorded one when reopening.
            ranker: a :class:`~crossscale.protocols.Ranker`; default ``ParentRanker()`` (``"max"``, ``box="fusion"``).
            device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``: for named components and the index.
            batch_size: images segmented and encoded per step of :meth:`index`.
            index_factory: for a new workspace, ``"auto"`` (the default: Flat while small, then IVF, IVF-SQ8, IVF-PQ,
                chosen by size within ``max_memory`` and migrated by the batch that outgrows it, or at ``save()``)
                or a faiss factory string (``"Flat"``, ``"HNSW32"``, ``"IVF4096,Flat"``), kept as it is; or a Milvus
                collection (``pip install "crossscale[milvus]"``): ``"milvus"`` (Milvus Lite, a file in the
                workspace), ``"milvus://host:19530"`` (a server), see :func:`~crossscale.index.parse_milvus_factory`
                and docs/scaling.md.
            max_memory: the RAM budget of an ``"auto"`` index: ``"4G"`` (default), ``"512M"``, or bytes.
                Recorded; a writer may give an existing ``"auto"`` workspace another one. It budgets the index's
                bytes; the process needs more (docs/scaling.md: IVF lists filled batch by batch hold ~1.26x).
            vector_dtype: how a new workspace stores its vectors: ``"float16"`` (the default: half the bytes in
                LMDB; cosine scores move by ~1e-3, no quality figure moved, see docs/benchmarks.md) or
                ``"float32"``. ``None`` when reopening: the recorded one.
            reduce_dim: for a new ``"auto"`` workspace, project vectors to this many dimensions in the index
                (e.g. 256 of EfficientNet-Lite0's 1280: 5x less RAM per region, faster scans) once there are
                8 per kept dimension to learn the projection from; the store keeps them whole, so the projection
                is learned afresh whenever the index migrates. Scores become the cosines of the projections
                (see docs/benchmarks.md for what it costs). ``None``: no projection (new), the recorded one
                (reopening).
            encoder_kwargs, segmenter_kwargs: arguments for components built by name
                (e.g. ``encoder_kwargs={"name_or_path": "/models/clip"}``); recorded in the workspace.
            readonly: open for searching only; many readers may run beside one writer.
            progress: show tqdm progress bars.
            max_pixels: images with more pixels are refused (decompression-bomb guard).
            map_size: initial LMDB map size in bytes; it doubles whenever a write needs more.
            refine: ``True`` (default): re-score the top parents of each search that verification did not settle
                (see ``refine_verified``) at the query's shape and grow each box to the match's extent
                (:func:`default_refiner`: a :class:`~crossscale.rank.MapRefiner` where the encoder can pool boxes
                from one pass, ~9 crops' worth of encoding per parent, else a
                :class:`~crossscale.rank.RegionRefiner`, up to 22 crops per parent; see docs/benchmarks.md).
                ``False``: the fastest searches. Or any :class:`~crossscale.protocols.Refiner`, e.g. a tuned
                ``MapRefiner``.
            verifier: for a new workspace, a :class:`~crossscale.protocols.Verifier` or a name for
                :func:`~crossscale.rank.create_verifier` (``"sift"``: :class:`~crossscale.rank.GeometricVerifier`):
                it keeps local features of each parent when indexing (~340 KB per parent for ``"sift"``), and
                checks the top matches of each search against them (a verified match gets the exact box and
                ranks first). ``None``: the default (``"sift"``) for a new workspace, the recorded one (or none)
                when reopening. ``False``: a new workspace without one. Recorded, with ``verifier_kwargs``.
            verify_matches: use the workspace's verifier when searching (``False``: skip it; indexing still keeps
                the local features).
            refine_verified: ``False`` (default): skip the refiner for a query whose best match the verifier
                confirmed: its box is exact and it ranks first whatever the refiner finds, so only the order, scores
                and boxes of the unverified matches below it would change (a ``min_score`` then sees their
                unrefined scores). On the quality benchmark every figure was the same as refining every search, at
                1/13-1/17 of its median query time (docs/benchmarks.md).
                ``True``: refine every search.
            local_search: also find parents by the verifier's local features (:class:`LocalCandidates`: a vote of
                the query's keypoints over every parent's, in a :class:`~crossscale.index.KeypointIndex` held in
                RAM, ~0.19 MB per parent with ``"sift"``); the best-voted parents the vector search missed join the
                results when the verifier confirms them. It finds small objects a region's vector misses: on the
                quality benchmark the default's ``hard`` r@1 rose 5-8 points, nothing fell, +0-3 ms per query
                (docs/benchmarks.md). Any workspace with local features can use it: the keypoint index is derived
                from them, kept by a writer in ``keypoints.index`` (built with what :meth:`index` adds), loaded at
                the first search, or built then if there is no file. ``None`` (default): on when the workspace's
                verifier has descriptors (``"sift"``), ``verify_matches`` is on and the workspace holds at most
                :data:`LOCAL_SEARCH_MAX_PARENTS` parents (10,000: ~1.9 GB of RAM; a warning says when it is off for
                size, also when an :meth:`index` call outgrows it). ``True``: on whatever the size (a
                :class:`ConfigurationError` without a verifier with descriptors). ``False``: off.

        Raises:
            WorkspaceMismatchError: reopened with an encoder (or verifier) other than the one that built it.
            WorkspaceLockedError: another process has the workspace open for writing.
            WorkspaceFormatError: the workspace is of a newer or unknown format.
            ConfigurationError, ModelLoadError: bad arguments, unavailable model weights.
        """
        batch_size = positive_int("batch_size", batch_size)
        max_pixels = int_at_least("max_pixels", max_pixels, 4)
        if not isinstance(refine, bool | Refiner):
            raise ConfigurationError(
                f"refine must be True, False or a Refiner (an object with refine(query, matches, load)), got {refine!r}"
            )
        for flag, value in (("verify_matches", verify_matches), ("refine_verified", refine_verified)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"{flag} must be True or False, got {value!r}")
        if local_search is not None and not isinstance(local_search, bool):
            raise ConfigurationError(f"local_search must be True, False or None (the default), got {local_search!r}")
        if ranker is not None:
            check_stage(ranker, Ranker, "ranker")
        request = StageRequest(
            {ENCODERS: encoder, SEGMENTERS: segmenter, VERIFIERS: verifier},
            {ENCODERS: encoder_kwargs, SEGMENTERS: segmenter_kwargs, VERIFIERS: verifier_kwargs},
            index_factory,
            max_memory,
            vector_dtype,
            reduce_dim,
            readonly,
            validate_device(device),
            Path(path),
        )
        workspace = Workspace.open(path, request.configure, readonly=readonly, device=device, map_size=map_size)
        enc = request.built[ENCODERS]
        if encoder is False:
            enc = VectorsOnly(workspace.config.encoder_name, workspace.config.dim)
            refine = False if refine is True else refine  # the default refiner embeds the parents' pixels
        try:
            return cls(
                workspace,
                encoder=enc,
                segmenter=request.built[SEGMENTERS],
                ranker=ranker or ParentRanker(),
                refiner=default_refiner(enc) if refine is True else None if refine is False else refine,
                verifier=request.built[VERIFIERS],
                verify_matches=verify_matches,
                refine_verified=refine_verified,
                local_search=local_search,
                device=device,
                batch_size=batch_size,
                progress=progress,
                max_pixels=max_pixels,
            )
        except BaseException:  # e.g. local_search with the workspace's recorded verifier: let its lock go
            workspace.close()
            raise

    # ================================================================== indexing
    @property
    def segmenter(self) -> Segmenter:
        """The segmenter used by :meth:`index` (built on first use when reopened without one)."""
        if self._segmenter is None:
            spec = self.workspace.config.segmenter_spec
            if spec is None:
                raise ConfigurationError(
                    "this workspace was segmented with a segmenter object; pass segmenter= to open() to index"
                )
            self._segmenter = create_segmenter(spec.name, device=self.device, **spec.kwargs)
        return self._segmenter

    def index(
        self,
        inputs: ImageInput | Iterable[Any],
        *,
        ids: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: bool | None = None,
        prefetch: int | None = None,
    ) -> IndexReport:
        """Add images to the workspace.

        Args:
            inputs: a folder (searched recursively for image files), a path, bytes, a PIL image,
                a numpy array, or an iterable of those or of ``(id, image)`` / ``(id, image, metadata)`` tuples.
            ids: parent ids, one per input (instead of tuples). Default: a content hash, so
                indexing the same image again does nothing.
            metadata: JSON-serialisable metadata stored with every parent of this call.
            progress: show a progress bar (default: the workspace's setting).
            prefetch: batches read, segmented and verifier-extracted ahead in a background thread while the
                encoder works on the current one (0: none; the result is the same either way). Default: 1 when
                the encoder runs on a GPU, else 0: on a CPU the encoder already uses every core, and overlapping
                CPU stages with it measured 5% slower on 2 cores (docs/benchmarks.md).

        Returns:
            An :class:`IndexReport`: added ids, ids already present, failures with their reasons.
            A bad input never stops the others.

        Raises:
            CapabilityError: the workspace was opened with ``encoder=False`` (searching by vectors only).
        """
        self.workspace.check_open(write=True)
        self._check_encoder("indexing")
        report = ingest(
            self.workspace,
            iter_inputs(inputs, ids, metadata),
            segmenter=self.segmenter,
            encoder=self.encoder,
            batch_size=self.batch_size,
            max_pixels=self.max_pixels,
            progress=self.progress if progress is None else progress,
            verifier=self.verifier,
            prefetch=self._default_prefetch() if prefetch is None else prefetch,
        )
        return self._after_ingest(report)

    def _after_ingest(self, report: IndexReport) -> IndexReport:
        """Local search's keypoint index is built with what was indexed (:meth:`index`, and Ray's ingest) and saved,
        its time counted in the report's; default local search is turned off if the collection outgrew
        :data:`LOCAL_SEARCH_MAX_PARENTS`."""
        if self.local is None or not report.added:
            return report
        if self._local_auto and not _local_fits(len(self.workspace)):
            self.local = None  # its file stays (behind): local_search=True catches it up
            return report
        started = time.perf_counter()
        self.local.update()
        self._save_local(after=report.seconds + time.perf_counter() - started)
        return dataclasses.replace(report, seconds=report.seconds + time.perf_counter() - started)

    def _save_local(self, *, after: float | None = None) -> None:
        """Save the keypoint index of local search (``after``: only if due after that many seconds of ingest); a
        failure is logged (the store has committed: it is caught up from the store by the next process)."""
        if self.local is None:
            return
        try:
            if after is None:
                self.local.save()
            else:
                self.local.save_if_due(after)
        except WorkspaceError as exc:
            logger.error("%s", exc)

    def _default_prefetch(self) -> int:
        """1 when the encoder runs on an accelerator (the CPU stages then overlap it for free), else 0."""
        return 0 if str(getattr(self.encoder, "device", "cpu")) == "cpu" else 1

    def delete(self, parent_id: str) -> None:
        """Remove a parent, its chunk records and its vectors.

        Raises:
            ParentNotFoundError: no such parent.
            WorkspaceError: its record is unreadable (its chunks are unknown); nothing is deleted.
        """
        self.workspace.delete(parent_id)

    def delete_many(self, parent_ids: Iterable[str]) -> list[str]:
        """Remove many parents, with their chunk records and vectors, in one store transaction (one commit, one
        change for readers to replay) and one index removal: :meth:`delete` of each costs a commit and an index
        pass apiece (docs/benchmarks.md, "Deleting many parents"). An id given twice is deleted once.

        Returns:
            The ids that were not stored (nothing to delete), each once, in the order given; every other one
            is deleted.

        Raises:
            ConfigurationError: ``parent_ids`` is a string (one id: use :meth:`delete`) or holds something other
                than a non-empty string; nothing is deleted then.
            WorkspaceError: a stored parent's record is unreadable (its chunks are unknown); nothing is deleted
                (``crossscale verify`` reports it).
        """
        if isinstance(parent_ids, str | bytes):
            raise ConfigurationError(f"delete_many takes an iterable of parent ids, got one id {parent_ids!r}")
        items = list(parent_ids)
        for i, parent_id in enumerate(items):
            if not isinstance(parent_id, str) or not parent_id:
                raise ConfigurationError(f"parent ids must be non-empty strings: item {i} is {parent_id!r}")
        wanted = list(dict.fromkeys(items))
        deleted = set(self.workspace.delete_many(wanted))
        return [parent_id for parent_id in wanted if parent_id not in deleted]

    # ================================================================== searching
    def search(
        self,
        query: ImageInput,
        top_k: int = 5,
        *,
        min_score: float | None = None,
        params: SearchParams | None = None,
    ) -> SearchResult:
        """The parents that best contain ``query``, best first.

        Args:
            query: the small image (path, bytes, PIL image or array), embedded whole.
            top_k: how many parents (fewer only if the workspace holds fewer).
            min_score: drop parents scoring below this.
            params: how hard the search looks, for this call only (:class:`~crossscale.types.SearchParams`, e.g.
                ``SearchParams(nprobe=64)``: fewer IVF lists, faster, lower recall; ``rescore=False``: the index's
                own scores ranked); ``None``: the index's own settings and :attr:`rescore`. Settings that do not
                apply to the index's structure are ignored. :meth:`tune_search` finds the fastest for a recall.

        Returns:
            A :class:`~crossscale.types.SearchResult`: a list of :class:`ParentMatch` that draws itself in a
            notebook (``result.show()`` for a PIL picture).

        Raises:
            ImageLoadError: the query cannot be read.
            CapabilityError: ``params`` given to a plugged-in index whose ``search`` takes none, or the workspace
                was opened with ``encoder=False`` (searching by vectors only).
        """
        return self.search_batch([query], top_k, min_score=min_score, params=params)[0]

    def search_batch(
        self,
        queries: Sequence[ImageInput],
        top_k: int = 5,
        *,
        min_score: float | None = None,
        params: SearchParams | None = None,
    ) -> list[SearchResult]:
        """:meth:`search` for many queries at once (one encoder pass, one index search)."""
        self._check_batch("search_batch", queries, top_k, one=str | os.PathLike | bytes | Image.Image | np.ndarray)
        SearchParams.checked(params)  # before any query is read or embedded
        self._check_encoder("searching by image")
        images = [load_image(q, max_pixels=self.max_pixels, to_store=False).image for q in queries]
        return self._search(embed_queries(self.encoder, images) if images else [], top_k, min_score, params)

    def search_vectors(
        self,
        vectors: np.ndarray,
        top_k: int = 5,
        *,
        min_score: float | None = None,
        params: SearchParams | None = None,
    ) -> list[SearchResult]:
        """The parents that best contain each query given as an embedding (one row per query), best first.

        For queries embedded elsewhere by the workspace's encoder (a GPU service, a cache): the same index
        search, ranking and ``min_score`` as :meth:`search_batch`, the same boxes from the chunks and the
        refiner (crops of each match box's own shape), but no geometric verification, which needs the query's
        pixels. Rows are L2-normalised first.

        Raises:
            VectorError: ``vectors`` is not a 2-D array of the workspace's dimension, holds NaN or inf, or a zero
                row.
        """
        self.workspace.check_open()
        positive_int("top_k", top_k)
        SearchParams.checked(params)  # before any query is read or embedded
        rows = self._vector_rows(vectors)
        return self._search([Query(v, None) for v in rows], top_k, min_score, params, vectors=rows)

    def _vector_rows(self, vectors: object) -> np.ndarray:
        """Query vectors as unit float32 rows of the workspace's dimension.

        Raises:
            VectorError: not a 2-D array of numbers of that dimension, or NaN, inf or a zero row.
        """
        try:
            array = np.asarray(vectors)
        except ValueError as exc:  # ragged rows
            raise VectorError(f"query vectors must be a 2-D array of numbers: {exc}") from exc
        if array.dtype.kind not in "fiu":
            raise VectorError(f"query vectors must be a 2-D array of numbers, got {type(vectors).__name__}")
        rows = l2_normalize(array)
        if rows.shape[1] != self.workspace.config.dim:
            raise VectorError(
                f"query vectors have dimension {rows.shape[1]}, the workspace's encoder "
                f"{self.workspace.config.encoder_name!r} gives {self.workspace.config.dim}"
            )
        return rows

    def preload(self, *, progress: bool | None = None) -> int:
        """Read the workspace's store once so that the OS's page cache holds it, and return the bytes read: the
        first searches after a fresh boot then re-score their hits from memory instead of the disk (at 10M regions,
        one query's p50 16-19 ms cold and 6.9-9.2 ms preloaded; the 7.9 GiB store read in 11-23 s). The whole
        store file is read, images included (:meth:`RootStore.preload <crossscale.index.RootStore.preload>`).
        ``crossscale preload -w WS`` does it from the shell, for the processes that open the workspace later.

        Args:
            progress: show a progress bar (default: the workspace's setting).

        Raises:
            WorkspaceError: the workspace is closed, or its store cannot be read.
        """
        self.workspace.check_open()
        return self.workspace.store.preload(progress=self.progress if progress is None else progress)

    def sample_vectors(self, count: int, *, seed: int | None = None) -> np.ndarray:
        """``count`` stored region vectors drawn at random, each chunk equally likely and none twice (every one
        where fewer are stored), as unit float32 rows in chunk-id order: queries for :meth:`measure_search` and
        :meth:`tune_search` before a service has queries of its own (``cs.tune_search(cs.sample_vectors(1000))``,
        ``crossscale measure --sample 1000``).

        A stored region is what a query of one object resembles, but it also finds itself: its own parent comes
        first at any setting. What the other ranks hold is measured as for any query; on the 10M-region benchmark
        its recall ran 0.1-0.9 points below that of queries that are noisy copies of regions, setting by setting
        (docs/benchmarks.md), so a choice made on it was the cautious one there. Tune on the service's own
        queries where there are some.

        Args:
            count: how many (>= 1).
            seed: for a repeatable draw (an int >= 0); ``None``: a fresh one.

        Returns:
            ``(n, dim)``: ``n`` is ``count`` or the chunks stored where fewer, less any all-zero vector (a region of
            a feature map's dead cells scores 0 against every query and cannot be one).

        Raises:
            ConfigurationError: a bad ``count`` or ``seed``.
            WorkspaceError: nothing is stored yet.
        """
        self.workspace.check_open()
        count = positive_int("count", count)
        if seed is not None:
            seed = int_at_least("seed", seed, 0)
        parents = self.workspace.parents
        total = parents.chunk_count
        if total == 0:
            raise WorkspaceError(f"{self.workspace.path}: no region is stored yet: nothing to sample")
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(total, min(count, total), replace=False))
        ids, vectors = self.workspace.store.vectors(parents.chunk_ids_at(picks))
        if len(ids) < len(picks):  # a mapped chunk without a vector: the store and the map disagree
            logger.warning("%d of %d sampled chunks have no stored vector", len(picks) - len(ids), len(picks))
        vectors = vectors.reshape(-1, self.workspace.config.dim)
        live = np.einsum("ij,ij->i", vectors, vectors) > 1e-24  # a region of dead feature-map cells is stored as 0
        if not live.all():
            logger.info("%d sampled regions have all-zero vectors: left out", int((~live).sum()))
        return l2_normalize(vectors[live])

    def measure_search(
        self,
        vectors: np.ndarray,
        settings: Sequence[SearchParams | None] = (None,),
        *,
        top_k: int = 10,
        repeats: int = 1,
        singles: int = 0,
    ) -> list[SearchMeasurement]:
        """Parent recall and speed of a batch search of ``vectors`` (one query per row) under each of
        ``settings``: what to read before choosing ``params`` for a collection (docs/scaling.md). Each setting is
        taken over :attr:`search_params`, as a search's ``params`` are (``None``: what searches use now).

        The exact parents come from an exhaustive search: every stored vector scored against every query (the
        cosines re-scoring computes) and each parent ranked by its best chunk, the order of the default ``"max"``
        aggregator. That reads the whole store once per group of queries, with a progress bar (at 10M regions on
        2 cores, 100-157 s for 1,000 queries, in two groups); memory stays bounded
        (:data:`crossscale.measure.BEST_BYTES`). The workspace should not change meanwhile (a writer's commits
        would be in one and not the other). Then the queries are searched once untimed (the store's
        pages read, a learned first depth settled), and once per setting and repeat as one batch, as
        :meth:`search_vectors` searches them but without the refiner (and the verifier), which re-rank on pixels
        after the vector search: what is measured is the index, re-scoring and the ranker, i.e. which parents
        reach the refiner. Each result is the fastest repeat. ``singles``: also search the first ``singles``
        queries one at a time under each setting, for the latency of one query
        (:attr:`~crossscale.types.SearchMeasurement.single_p50_ms`). Queries should be what users will search
        with (embeddings of typical query images); before there are any, :meth:`sample_vectors` draws stored
        regions (see there for what they measure).

        Returns:
            One :class:`~crossscale.types.SearchMeasurement` per setting, in their order.

        Raises:
            VectorError: ``vectors`` is not a 2-D array of the workspace's dimension, or holds NaN, inf or a zero
                row.
            ConfigurationError: ``settings`` is empty or holds something other than a ``SearchParams`` or
                ``None``; ``top_k`` or ``repeats`` is not a positive int, or ``singles`` a negative one.
            CapabilityError: the ranker does not rank parents by their best chunk (the exact search's order).
        """
        from tqdm.auto import tqdm

        from crossscale.measure import exact_parents, parent_recall

        self.workspace.check_open()
        positive_int("top_k", top_k)
        positive_int("repeats", repeats)
        int_at_least("singles", singles, 0)
        if isinstance(settings, SearchParams) or not isinstance(settings, Sequence) or not settings:
            raise ConfigurationError(f"settings must be a non-empty sequence of SearchParams or None, got {settings!r}")
        for i, params in enumerate(settings):
            SearchParams.checked(params, f"settings[{i}]")
        if getattr(self.ranker, "group_size", None) is None:
            raise CapabilityError(
                f"measure_search ranks the exact parents by their best chunk, as ParentRanker(aggregator='max') "
                f"does; this workspace's ranker ({self.ranker!r}) ranks them otherwise"
            )
        rows = self._vector_rows(vectors)
        store, parents = self.workspace.store, self.workspace.parents
        total, chunks = len(store), store.chunk_count()

        def stored() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            batch = 65536  # vectors read at a time
            bar = tqdm(total=-(-chunks // batch), disable=not self.progress, desc="exact parents", unit="batch")
            with bar:
                for ids, read in store.iter_vectors(batch):
                    yield ids, read
                    bar.update()

        codes = exact_parents(rows, top_k, stored, parents, parent_count=total)
        exact = [[parents.parent_id(int(c)) for c in row if c >= 0] for row in codes]
        queries = [Query(v, None) for v in rows]
        self._search(queries, top_k, None, settings[0], plain=True, vectors=rows)  # untimed: pages, FetchDepth
        out = []
        for params in settings:
            seconds = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                results = self._search(queries, top_k, None, params, plain=True, vectors=rows)
                seconds = min(seconds, time.perf_counter() - start)
            found = [[m.parent_id for m in result] for result in results]
            single = []
            for query in queries[:singles]:
                start = time.perf_counter()
                self._search([query], top_k, None, params, plain=True)
                single.append((time.perf_counter() - start) * 1e3)
            out.append(SearchMeasurement(params, parent_recall(found, exact), seconds, len(rows), tuple(single)))
        return out

    def tune_search(
        self,
        vectors: np.ndarray,
        *,
        min_recall: float = 0.95,
        top_k: int = 10,
        settings: Sequence[SearchParams | None] | None = None,
        repeats: int = 1,
        singles: int = 0,
    ) -> SearchTuning:
        """The fastest search setting whose parent recall@``top_k`` on ``vectors`` reaches ``min_recall``, chosen by
        :meth:`measure_search` (whose notes apply: one exhaustive search, then one batch search per setting and
        repeat). Nothing is changed: give the result's :attr:`~crossscale.types.SearchTuning.params` to the
        searches that should use it (``cs.search_vectors(v, params=tuning.params)``), or save it with the
        workspace for every later search (:meth:`save_search_params`).

        ``settings``: what to try; ``None``: what searches use now (:attr:`search_params` over the index's own),
        and for an IVF index 3/4, 1/2, 3/8 and 1/4 of those lists (an HNSW graph: 1/2 and 1/4 of its beam), each
        with and without re-scoring where the index's scores are approximate, and re-scoring only each parent's
        first :data:`TUNING_RESCORE_PER_PARENT` hits (``rescore_per_parent``). :meth:`save_search_params` keeps
        the choice for later searches. The fastest is the highest measured queries per second of the batch
        (equal rates: the higher recall). Speeds are of batches of ``len(vectors)`` queries, which is what the
        choice is for: tune with as many queries as a batch of the service will hold.

        Returns:
            A :class:`~crossscale.types.SearchTuning`: every measurement, and the chosen one (``None`` with a
            warning when no setting reached ``min_recall``).

        Raises:
            ConfigurationError: ``min_recall`` not in (0, 1]; and what :meth:`measure_search` raises.
        """
        min_recall = number_in("min_recall", min_recall, 0.0, 1.0, low_open=True)
        if settings is None:
            settings = self._tuning_settings()
        elif isinstance(settings, Sequence) and not isinstance(settings, SearchParams):
            settings = [SearchParams() if s is None else s for s in settings]  # "own" as a setting, never None
        measured = self.measure_search(vectors, settings, top_k=top_k, repeats=repeats, singles=singles)
        reached = [m for m in measured if m.recall >= min_recall]
        chosen = max(reached, key=lambda m: (m.queries_per_second, m.recall), default=None)
        if chosen is None:
            best = max(m.recall for m in measured)
            logger.warning("no setting reached parent recall@%d %.3f (the best: %.4f)", top_k, min_recall, best)
        else:
            logger.info("fastest with parent recall@%d >= %.3f: %s", top_k, min_recall, chosen.params)
        return SearchTuning(min_recall, tuple(measured), chosen)

    def _tuning_settings(self) -> list[SearchParams]:
        """What :meth:`tune_search` tries by default: see there."""
        index = self.workspace.searchable_index()
        own = self.search_params.over(getattr(index, "search_settings", SearchParams()))  # what searches use now
        grid: list[SearchParams] = [SearchParams()]
        for name, shares in (("nprobe", (3 / 4, 1 / 2, 3 / 8, 1 / 4)), ("ef_search", (1 / 2, 1 / 4))):
            value = getattr(own, name)
            if value is not None:
                fewer = sorted({max(1, round(value * share)) for share in shares} - {value}, reverse=True)
                grid += [dataclasses.replace(SearchParams(), **{name: n}) for n in fewer]
                break  # an IVF index's own beam is its coarse quantizer's, set with nprobe
        if not getattr(index, "scores_exact", True):
            rescoring = self.rescore if own.rescore is None else own.rescore
            flipped = [dataclasses.replace(p, rescore=not rescoring) for p in grid]
            if own.rescore_per_parent is None:
                flipped += [
                    dataclasses.replace(p, rescore=True, rescore_per_parent=TUNING_RESCORE_PER_PARENT) for p in grid
                ]
            grid += flipped
        return grid

    def search_text(
        self, text: str, top_k: int = 5, *, min_score: float | None = None, params: SearchParams | None = None
    ) -> SearchResult:
        """The parents that best show what ``text`` describes, and where, best first.

        Needs an encoder with a text tower (:class:`~crossscale.protocols.TextEncoder`: CLIP, SigLIP); the
        boxes come from the same chunks, ranker and refiner as image queries. Text-to-image scores are on another
        scale than image-to-image ones (far lower for CLIP), so a ``min_score`` does not carry over between them.

        Raises:
            CapabilityError: the workspace's encoder embeds images only, or it was opened with ``encoder=False``.
            ConfigurationError: ``text`` is not a non-empty string.
        """
        return self.search_text_batch([text], top_k, min_score=min_score, params=params)[0]

    def search_text_batch(
        self,
        texts: Sequence[str],
        top_k: int = 5,
        *,
        min_score: float | None = None,
        params: SearchParams | None = None,
    ) -> list[SearchResult]:
        """:meth:`search_text` for many texts at once."""
        self._check_batch("search_text_batch", texts, top_k, one=str)
        SearchParams.checked(params)  # before any query is read or embedded
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ConfigurationError(f"text query {i} must be a non-empty string, got {text!r}")
        self._check_encoder("searching by text")
        if not isinstance(self.encoder, TextEncoder):
            raise CapabilityError(
                f"encoder {self.encoder.name!r} embeds images only, so it cannot search by text; build the "
                "workspace with an image-text encoder such as encoder='clip' or 'siglip'"
            )
        if not texts:
            return []
        vectors = embed_text(self.encoder, texts)
        queries = [Query(v, None, text) for v, text in zip(vectors, texts, strict=True)]
        return self._search(queries, top_k, min_score, params)

    def _check_encoder(self, what: str) -> None:
        """Raises :class:`CapabilityError` where the workspace was opened without its encoder (``encoder=False``)."""
        if isinstance(self.encoder, VectorsOnly):
            raise CapabilityError(self.encoder.refusal(what))

    def _check_batch(self, method: str, items: object, top_k: object, *, one: Any) -> None:
        """The checks every search makes first: open, a valid ``top_k``, and a sequence rather than one item."""
        self.workspace.check_open()
        positive_int("top_k", top_k)
        if isinstance(items, one):
            single = method.removesuffix("_batch")
            raise ConfigurationError(f"{method} takes a sequence of queries; use {single}() for one")

    def _search(
        self,
        queries: list[Query],
        top_k: int,
        min_score: float | None,
        params: SearchParams | None,
        *,
        plain: bool = False,
        vectors: np.ndarray | None = None,
    ) -> list[SearchResult]:
        """The query path over the workspace; ``plain``: the vector search alone (index, re-scoring, ranker),
        without the refiner, the verifier and local candidates, which work on pixels after it; ``vectors``: the
        queries' vectors as the rows of one array, where the caller has them so (not copied again)."""
        index = self.workspace.searchable_index()
        params = self._params(params)
        pixels = not plain
        rescoring = self._rescores(index, params)
        results = search_parents(
            queries,
            top_k,
            index=index,
            records=self.workspace.records,
            parents=self.workspace.parents,
            ranker=self.ranker,
            refiner=self.refiner if pixels else None,
            load_parent=self.workspace.image_if_present,
            min_score=min_score,
            verifier=self.verifier if self.verify_matches and pixels else None,
            load_features=self.workspace.local_features,
            exact_vectors=self.workspace.store.vectors if rescoring else None,
            rescore_per_parent=params.rescore_per_parent if rescoring else None,
            refine_verified=self.refine_verified,
            details=self.workspace.chunk_details(),
            fetch_depth=self.fetch_depth if getattr(index, "prefix_stable", False) else None,
            candidates=self._candidates if self.local is not None and self.verify_matches and pixels else None,
            params=None if params is None else params.for_index(),
            vectors=vectors,
        )
        return [
            SearchResult([m._attached(self.image) for m in row], query.image if query.image is not None else query.text)
            for query, row in zip(queries, results, strict=True)
        ]

    @property
    def search_params(self) -> SearchParams:
        """The setting every search starts from: the one set on this object, else the one saved with the
        workspace for its index's present structure (:meth:`save_search_params`), else ``SearchParams()``.
        Setting it changes this object's searches only; setting ``None`` follows the saved one again.

        Raises:
            ConfigurationError: (setting) neither a :class:`~crossscale.types.SearchParams` nor ``None``.
        """
        return self._search_params if self._search_params is not None else self.workspace.saved_search_params()

    @search_params.setter
    def search_params(self, params: SearchParams | None) -> None:
        self._search_params = SearchParams.checked(params, "CrossScaleSearch.search_params")

    def _params(self, params: SearchParams | None) -> SearchParams:
        """A call's ``params`` over :attr:`search_params`."""
        base = self.search_params
        return base if params is None else params.over(base)

    def save_search_params(self, params: SearchParams | None) -> None:
        """Save, with the workspace, the setting searches use with ``params=params`` (``params`` over
        :attr:`search_params`), and make it this object's :attr:`search_params`: every facade opening the
        workspace later starts from it too (``crossscale search`` and ``measure`` included). ``None`` clears it
        (searches then use the index's own settings). It is saved for the index's present structure: after a
        migration to another one, opening ignores it with a warning (tune again).

        ``cs.save_search_params(cs.tune_search(queries, min_recall=0.95).params)`` keeps the fastest setting that
        reached the recall on your queries.

        Raises:
            WorkspaceError: the workspace is open read-only.
            ConfigurationError: ``params`` is neither a :class:`~crossscale.types.SearchParams` nor ``None``.
        """
        checked = SearchParams.checked(params)
        setting = SearchParams() if checked is None else self._params(checked)
        self.workspace.save_search_params(setting)
        self._search_params = None  # what was set here is in the saved setting now

    def _rescores(self, index: object, params: SearchParams | None) -> bool:
        """Whether a search re-scores the hits of ``index`` against the stored vectors: asked for (by ``params``,
        else by :attr:`rescore`), and its scores are approximate."""
        asked = self.rescore if params is None or params.rescore is None else params.rescore
        return asked and not getattr(index, "scores_exact", True)

    def _candidates(self, query: Query, ranked: AbstractSet[str]) -> list[ParentMatch]:
        return [] if self.local is None else self.local.candidates(query, ranked, self.ranker)

    # ================================================================== the workspace, delegated
    path = Forward[Path]("workspace")
    config = Forward[WorkspaceConfig]("workspace")  # what the workspace was built with (workspace.json)
    store = Forward[RootStore]("workspace")
    chunk_index = Forward[AnyChunkIndex]("workspace", "index")
    generation = Forward[int]("workspace")  # the store generation this object's index reflects (see refresh())

    def __len__(self) -> int:
        """Number of parent images."""
        return len(self.workspace)

    def __contains__(self, parent_id: object) -> bool:
        return parent_id in self.workspace

    def parent_ids(self) -> Iterator[str]:
        """All parent ids."""
        return self.workspace.parent_ids()

    def record(self, parent_id: str) -> ParentRecord:
        """What is stored about a parent: size, format, source path, metadata, chunk ids."""
        return self.workspace.record(parent_id)

    def image(self, parent_id: str) -> Image.Image:
        """The parent image exactly as it was indexed (RGB, EXIF orientation applied: the frame boxes refer to)."""
        return self.workspace.image(parent_id)

    def info(self) -> dict[str, Any]:
        """A summary of the workspace, JSON-ready; with ``local_search`` (whether this object uses it) and
        ``keypoint_file_bytes`` (the size of its keypoint index file, ``None`` if there is none)."""
        info = self.workspace.info()
        file = self.path / KEYPOINT_FILE
        info["local_search"] = self.local is not None
        info["keypoint_file_bytes"] = file.stat().st_size if file.exists() else None
        return info

    def verify(self) -> VerifyReport:
        """Check every invariant of the workspace (``crossscale verify``); changes nothing.

        With a keypoint index file (local search), also that it is readable, not ahead of the store, and holds
        what the verifier reads from each parent's stored features (:meth:`LocalCandidates.check`).
        """
        report = self.workspace.verify()
        local = self._local_for_files()
        if local is None:
            if (self.path / KEYPOINT_FILE).exists():
                return dataclasses.replace(
                    report,
                    notes=(
                        *report.notes,
                        "a keypoint index file is present; without the verifier it was built with it is not checked",
                    ),
                )
            return report
        problems, notes = local.check()
        if self.local is None and not (self.path / KEYPOINT_FILE).exists():
            notes = []  # local search is not in use: its missing file is nothing to note
        return dataclasses.replace(
            report,
            ok=report.ok and not problems,
            problems=(*report.problems, *problems),
            notes=(*report.notes, *notes),
        )

    def _local_for_files(self) -> LocalCandidates | None:
        """The local search in use, or one to check or rebuild a keypoint index file left by another session
        (``None`` if the verifier has no descriptors)."""
        if self.local is not None:
            return self.local
        if isinstance(self.verifier, DescriptorVerifier):
            return LocalCandidates(self.workspace, self.verifier, progress=self.progress)
        return None

    def refresh(self) -> int:
        """Catch a reader up with what writers committed since; returns the store generation now seen."""
        return self.workspace.refresh()

    def save(self) -> None:
        """Write the chunk index and the parent map (and the keypoint index of local search), where they changed,
        to disk now (also done after :meth:`index` and on :meth:`close`)."""
        self.workspace.save()
        if self.local is not None:
            self.local.save()

    def rebuild_index(self) -> None:
        """Rebuild the chunk index from the vectors in the store, and save it (``crossscale repair``); also the
        keypoint index, if local search is on or the workspace has its file."""
        self.workspace.rebuild_index()
        if self.local is not None or (self.path / KEYPOINT_FILE).exists():
            local = self._local_for_files()
            if local is not None:
                local.rebuild()
            else:  # derived, and it cannot be rebuilt without its verifier: the next local search builds it
                (self.path / KEYPOINT_FILE).unlink(missing_ok=True)

    def close(self) -> None:
        """Save the indexes, close the store and release the lock. Idempotent."""
        try:
            if not self.workspace.closed:
                self._save_local()
        finally:
            self.workspace.close()

    def __enter__(self) -> CrossScaleSearch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.workspace.closed:
            return f"CrossScaleSearch({str(self.path)!r}, closed)"
        return (
            f"CrossScaleSearch({str(self.path)!r}, parents={len(self.store)}, chunks={len(self.chunk_index)}, "
            f"encoder={self.encoder.name!r})"
        )

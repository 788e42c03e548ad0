"""The facade: composes a segmenter, an encoder, a ranker and a refiner around a workspace.

It decides nothing itself. Indexing runs :func:`crossscale.ingest.ingest`; searching runs
:func:`crossscale.query.search_parents`; the workspace owns the files, the lock, the store and the index.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from crossscale._checks import int_at_least, positive_int
from crossscale._device import validate_device
from crossscale._forward import Forward
from crossscale._images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from crossscale._vectors import embed_text
from crossscale.encode import create_encoder
from crossscale.errors import CapabilityError, ConfigurationError, WorkspaceMismatchError
from crossscale.index import ChunkIndex, RootStore, parse_memory
from crossscale.index.root_store import ParentRecord
from crossscale.ingest import ingest, iter_inputs, json_ready
from crossscale.protocols import Encoder, Ranker, Refiner, Segmenter, TextEncoder, Verifier, check_stage
from crossscale.query import embed_queries, search_parents
from crossscale.rank import ParentRanker, RegionRefiner, create_verifier
from crossscale.segment import create_segmenter
from crossscale.types import IndexReport, Query, SearchResult
from crossscale.workspace import (
    AUTO_INDEX,
    WORKSPACE_FORMAT,
    ComponentSpec,
    VerifyReport,
    Workspace,
    WorkspaceConfig,
    new_config,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_SEGMENTER",
    "DEFAULT_VERIFIER",
    "WORKSPACE_FORMAT",
    "CrossScaleSearch",
    "VerifyReport",
]

DEFAULT_ENCODER = "clip"
#: new workspaces keep SIFT features of each parent and verify the top matches (docs/benchmarks.md)
DEFAULT_VERIFIER = "sift"
DEFAULT_SEGMENTER = "whole+yolo+tiles"


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
        encoder: str | Encoder | None = None,
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
        max_memory: str | int | None = None,
    ) -> CrossScaleSearch:
        """Create the workspace at ``path``, or reopen it.

        Args:
            path: the workspace directory.
            encoder: a built :class:`~crossscale.protocols.Encoder`, or a name for
                :func:`~crossscale.encode.create_encoder` (``"clip"``, ``"efficientnet-lite0"``,
                ``"color-histogram"``). ``None``: the default (``"clip"``) for a new workspace,
                the recorded one when reopening.
            segmenter: a built :class:`~crossscale.protocols.Segmenter`, or a name for
                :func:`~crossscale.segment.create_segmenter` (``"whole+yolo+tiles"``, ``"whole+tiles"``, ...).
                ``None``: the default for a new workspace, the recorded one when reopening.
            ranker: a :class:`~crossscale.protocols.Ranker`; default ``ParentRanker()`` (``"max"``, ``box="fusion"``).
            device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``: for named components and the index.
            batch_size: images segmented and encoded per step of :meth:`index`.
            index_factory: for a new workspace, ``"auto"`` (the default: Flat while small, then IVF, then IVF-PQ,
                chosen by size within ``max_memory`` and migrated when the collection outgrows it, at ``save()``)
                or a faiss factory string (``"Flat"``, ``"HNSW32"``, ``"IVF4096,Flat"``), kept as it is.
            max_memory: the RAM budget of an ``"auto"`` index: ``"4G"`` (default), ``"512M"``, or bytes.
                Recorded; a writer may give an existing ``"auto"`` workspace another one.
            encoder_kwargs, segmenter_kwargs: arguments for components built by name
                (e.g. ``encoder_kwargs={"name_or_path": "/models/clip"}``); recorded in the workspace.
            readonly: open for searching only; many readers may run beside one writer.
            progress: show tqdm progress bars.
            max_pixels: images with more pixels are refused (decompression-bomb guard).
            map_size: initial LMDB map size in bytes; it doubles whenever a write needs more.
            refine: ``True`` (default): re-score the top parents of each search with crops at the query's shape
                and grow each box to the match's extent (:class:`~crossscale.rank.RegionRefiner`; better order
                and boxes for some 60 more encoder passes per query, see docs/benchmarks.md). ``False``: the
                fastest searches. Or any :class:`~crossscale.protocols.Refiner`, e.g. a tuned ``RegionRefiner``.
            verifier: for a new workspace, a :class:`~crossscale.protocols.Verifier` or a name for
                :func:`~crossscale.rank.create_verifier` (``"sift"``: :class:`~crossscale.rank.GeometricVerifier`):
                it keeps local features of each parent when indexing (~230 KB per parent for ``"sift"``), and
                checks the top matches of each search against them (a verified match gets the exact box and
                ranks first). ``None``: the default (``"sift"``) for a new workspace, the recorded one (or none)
                when reopening. ``False``: a new workspace without one. Recorded, with ``verifier_kwargs``.
            verify_matches: use the workspace's verifier when searching (``False``: skip it; indexing still keeps
                the local features).

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
        if not isinstance(verify_matches, bool):
            raise ConfigurationError(f"verify_matches must be True or False, got {verify_matches!r}")
        if ranker is not None:
            check_stage(ranker, Ranker, "ranker")
        request = _Request(
            {_ENCODERS: encoder, _SEGMENTERS: segmenter, _VERIFIERS: verifier},
            {_ENCODERS: encoder_kwargs, _SEGMENTERS: segmenter_kwargs, _VERIFIERS: verifier_kwargs},
            index_factory,
            max_memory,
            readonly,
            validate_device(device),
            Path(path),
        )
        workspace = Workspace.open(path, request.configure, readonly=readonly, device=device, map_size=map_size)
        enc = request.built[_ENCODERS]
        return cls(
            workspace,
            encoder=enc,
            segmenter=request.built[_SEGMENTERS],
            ranker=ranker or ParentRanker(),
            refiner=RegionRefiner(enc) if refine is True else None if refine is False else refine,
            verifier=request.built[_VERIFIERS],
            verify_matches=verify_matches,
            device=device,
            batch_size=batch_size,
            progress=progress,
            max_pixels=max_pixels,
        )

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
    ) -> IndexReport:
        """Add images to the workspace.

        Args:
            inputs: a folder (searched recursively for image files), a path, bytes, a PIL image,
                a numpy array, or an iterable of those or of ``(id, image)`` / ``(id, image, metadata)`` tuples.
            ids: parent ids, one per input (instead of tuples). Default: a content hash, so
                indexing the same image again does nothing.
            metadata: JSON-serialisable metadata stored with every parent of this call.
            progress: show a progress bar (default: the workspace's setting).

        Returns:
            An :class:`IndexReport`: added ids, ids already present, failures with their reasons.
            A bad input never stops the others.
        """
        self.workspace.check_open(write=True)
        return ingest(
            self.workspace,
            iter_inputs(inputs, ids, metadata),
            segmenter=self.segmenter,
            encoder=self.encoder,
            batch_size=self.batch_size,
            max_pixels=self.max_pixels,
            progress=self.progress if progress is None else progress,
            verifier=self.verifier,
        )

    def delete(self, parent_id: str) -> None:
        """Remove a parent, its chunk records and its vectors.

        Raises:
            ParentNotFoundError: no such parent.
        """
        self.workspace.delete(parent_id)

    # ================================================================== searching
    def search(self, query: ImageInput, top_k: int = 5, *, min_score: float | None = None) -> SearchResult:
        """The parents that best contain ``query``, best first.

        Args:
            query: the small image (path, bytes, PIL image or array), embedded whole.
            top_k: how many parents (fewer only if the workspace holds fewer).
            min_score: drop parents scoring below this.

        Returns:
            A :class:`~crossscale.types.SearchResult`: a list of :class:`ParentMatch` that draws itself in a
            notebook (``result.show()`` for a PIL picture).

        Raises:
            ImageLoadError: the query cannot be read.
        """
        return self.search_batch([query], top_k, min_score=min_score)[0]

    def search_batch(
        self, queries: Sequence[ImageInput], top_k: int = 5, *, min_score: float | None = None
    ) -> list[SearchResult]:
        """:meth:`search` for many queries at once (one encoder pass, one index search)."""
        self._check_batch("search_batch", queries, top_k, one=str | os.PathLike | bytes | Image.Image | np.ndarray)
        images = [load_image(q, max_pixels=self.max_pixels).image for q in queries]
        return self._search(embed_queries(self.encoder, images) if images else [], top_k, min_score)

    def search_text(self, text: str, top_k: int = 5, *, min_score: float | None = None) -> SearchResult:
        """The parents that best show what ``text`` describes, and where, best first.

        Needs an encoder with a text tower (:class:`~crossscale.protocols.TextEncoder`: CLIP, SigLIP); the
        boxes come from the same chunks, ranker and refiner as image queries. Text-to-image scores are on another
        scale than image-to-image ones (far lower for CLIP), so a ``min_score`` does not carry over between them.

        Raises:
            CapabilityError: the workspace's encoder embeds images only.
            ConfigurationError: ``text`` is not a non-empty string.
        """
        return self.search_text_batch([text], top_k, min_score=min_score)[0]

    def search_text_batch(
        self, texts: Sequence[str], top_k: int = 5, *, min_score: float | None = None
    ) -> list[SearchResult]:
        """:meth:`search_text` for many texts at once."""
        self._check_batch("search_text_batch", texts, top_k, one=str)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ConfigurationError(f"text query {i} must be a non-empty string, got {text!r}")
        if not isinstance(self.encoder, TextEncoder):
            raise CapabilityError(
                f"encoder {self.encoder.name!r} embeds images only, so it cannot search by text; build the "
                "workspace with an image-text encoder such as encoder='clip' or 'siglip'"
            )
        if not texts:
            return []
        vectors = embed_text(self.encoder, texts)
        return self._search([Query(v, None, text) for v, text in zip(vectors, texts, strict=True)], top_k, min_score)

    def _check_batch(self, method: str, items: object, top_k: object, *, one: Any) -> None:
        """The checks every search makes first: open, a valid ``top_k``, and a sequence rather than one item."""
        self.workspace.check_open()
        positive_int("top_k", top_k)
        if isinstance(items, one):
            single = method.removesuffix("_batch")
            raise ConfigurationError(f"{method} takes a sequence of queries; use {single}() for one")

    def _search(self, queries: list[Query], top_k: int, min_score: float | None) -> list[SearchResult]:
        index = self.workspace.searchable_index()
        results = search_parents(
            queries,
            top_k,
            index=index,
            records=self.workspace.records,
            ranker=self.ranker,
            refiner=self.refiner,
            load_parent=self.workspace.image_if_present,
            min_score=min_score,
            verifier=self.verifier if self.verify_matches else None,
            load_features=self.workspace.local_features,
        )
        return [
            SearchResult(
                [dataclasses.replace(m, _loader=self.image) for m in row],
                query.image if query.image is not None else query.text,
            )
            for query, row in zip(queries, results, strict=True)
        ]

    # ================================================================== the workspace, delegated
    path = Forward[Path]("workspace")
    config = Forward[WorkspaceConfig]("workspace")  # what the workspace was built with (workspace.json)
    store = Forward[RootStore]("workspace")
    chunk_index = Forward[ChunkIndex]("workspace", "index")
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
        """A summary of the workspace, JSON-ready."""
        return self.workspace.info()

    def verify(self) -> VerifyReport:
        """Check every invariant of the workspace (``crossscale verify``); changes nothing."""
        return self.workspace.verify()

    def refresh(self) -> int:
        """Catch a reader up with what writers committed since; returns the store generation now seen."""
        return self.workspace.refresh()

    def save(self) -> None:
        """Write the chunk index to disk now (also done after :meth:`index` and on :meth:`close`)."""
        self.workspace.save()

    def rebuild_index(self) -> None:
        """Rebuild the chunk index from the vectors in the store, and save it (``crossscale repair``)."""
        self.workspace.rebuild_index()

    def close(self) -> None:
        """Save the index, close the store and release the lock. Idempotent."""
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


# ====================================================================== building the stages a workspace records
@dataclass(frozen=True)
class _StageKind:
    """A kind of stage a workspace records: its name in arguments, its default, how to build it, its protocol."""

    what: str
    default: str | None
    create: Callable[[str, str, Mapping[str, Any]], Any]  # (name, device, kwargs) -> stage
    protocol: type


_ENCODERS = _StageKind("encoder", DEFAULT_ENCODER, lambda n, d, kw: create_encoder(n, device=d, **kw), Encoder)
_SEGMENTERS = _StageKind(
    "segmenter", DEFAULT_SEGMENTER, lambda n, d, kw: create_segmenter(n, device=d, **kw), Segmenter
)
_VERIFIERS = _StageKind("verifier", DEFAULT_VERIFIER, lambda n, d, kw: create_verifier(n, **kw), Verifier)


class _Request:
    """What ``open()`` was asked for; :meth:`configure` turns it, and the stored config, into stages and a config."""

    def __init__(
        self,
        given: dict[_StageKind, Any],
        kwargs: dict[_StageKind, Mapping[str, Any] | None],
        index_factory: str | None,
        max_memory: str | int | None,
        readonly: bool,
        device: str,
        path: Path,
    ) -> None:
        for kind, stage in given.items():  # refused before anything touches the disk
            if stage is not None and stage is not False and not isinstance(stage, str):
                check_stage(stage, kind.protocol, kind.what)
        self.given, self.kwargs = given, kwargs
        self.index_factory, self.readonly, self.device, self.path = index_factory, readonly, device, path
        self.max_memory = parse_memory(max_memory) if max_memory is not None else None
        self.built: dict[_StageKind, Any] = {}

    def _stage(self, kind: _StageKind, recorded: ComponentSpec | None, reopening: bool, build_now: bool) -> Any:
        stage, spec = _resolve_stage(
            kind,
            self.given[kind],
            self.kwargs[kind],
            recorded,
            reopening=reopening,
            build_now=build_now,
            device=self.device,
        )
        self.built[kind] = stage
        return spec

    def configure(self, stored: WorkspaceConfig | None) -> WorkspaceConfig:
        """Called by :meth:`Workspace.open` under the lock with the stored config (``None``: a new workspace)."""
        reopening = stored is not None
        asked = self.given[_VERIFIERS]
        if stored is not None and stored.verifier_name is None and asked not in (None, False):
            raise ConfigurationError(
                f"{self.path}: this workspace keeps no local features; verifier= only applies to new workspaces"
            )
        if stored is not None and stored.verifier_name is not None and asked is False:
            raise ConfigurationError(
                f"{self.path}: this workspace keeps the local features of verifier {stored.verifier_name!r} and "
                "needs it to index; pass verify_matches=False to search without verifying"
            )
        enc_spec = self._stage(_ENCODERS, stored.encoder_spec if stored else None, reopening, True)
        seg_spec = self._stage(_SEGMENTERS, stored.segmenter_spec if stored else None, reopening, not self.readonly)
        ver_spec = self._stage(_VERIFIERS, stored.verifier_spec if stored else None, reopening, True)
        enc, seg, ver = (self.built[k] for k in (_ENCODERS, _SEGMENTERS, _VERIFIERS))
        for kind, stage in ((_ENCODERS, enc), (_VERIFIERS, ver)):
            recorded_name = (
                None if stored is None else stored.encoder_name if kind is _ENCODERS else stored.verifier_name
            )
            if stage is None and recorded_name is not None:
                raise ConfigurationError(
                    f"this workspace was built with {kind.what} {recorded_name!r} passed as an object; pass the "
                    f"same {kind.what}= to reopen it"
                )
        if stored is None:
            return new_config(
                encoder_name=enc.name,
                dim=int(enc.dim),
                encoder_spec=enc_spec,
                segmenter_name=seg.name if seg is not None else None,
                segmenter_spec=seg_spec,
                index_factory=self.index_factory or AUTO_INDEX,
                verifier_name=ver.name if ver is not None else None,
                verifier_spec=ver_spec,
                max_memory=self.max_memory,
            )
        _check_compatible(self.path, stored, enc, seg, ver, self.index_factory)
        if self.max_memory is not None and self.max_memory != stored.max_memory:
            if stored.index_factory != AUTO_INDEX:
                raise ConfigurationError(
                    f"{self.path}: max_memory only applies to an 'auto' index; this one is {stored.index_factory!r}"
                )
            return dataclasses.replace(stored, max_memory=self.max_memory)  # recorded by Workspace.open
        return stored


def _resolve_stage(
    kind: _StageKind,
    given: object,
    kwargs: Mapping[str, Any] | None,
    recorded: ComponentSpec | None,
    *,
    reopening: bool,
    build_now: bool,
    device: str,
) -> tuple[Any, ComponentSpec | None]:
    """A stage and how to rebuild it: from a name, an object, or (``given`` None, ``reopening``) the workspace's
    record. ``(None, recorded)`` when reopening without one and it is not to be built now, or cannot be; and
    ``(None, None)`` for a new workspace asked for none of a kind that has no default."""
    if given is False:  # "none of this kind" (a kind with a default); configure() refused it where it is recorded
        return None, None
    if given is None and reopening:
        if recorded is None or not build_now:
            return None, recorded
        return kind.create(recorded.name, device, recorded.kwargs), recorded
    if given is None and kind.default is None:
        return None, None
    if given is None or isinstance(given, str):
        name = given or kind.default
        spec = ComponentSpec(str(name), json_ready(dict(kwargs or {}), f"{kind.what}_kwargs"))
        return kind.create(spec.name, device, spec.kwargs), spec
    if kwargs:
        raise ConfigurationError(f"{kind.what}_kwargs only applies when {kind.what} is given by name")
    return given, None  # checked against kind.protocol by _Request


def _check_compatible(
    root: Path,
    config: WorkspaceConfig,
    enc: Encoder,
    seg: Segmenter | None,
    ver: Verifier | None,
    index_factory: str | None,
) -> None:
    if enc.name != config.encoder_name or int(enc.dim) != config.dim:
        raise WorkspaceMismatchError(
            f"{root}: built with encoder {config.encoder_name!r} (dim {config.dim}), "
            f"opened with {enc.name!r} (dim {enc.dim}); vectors of different encoders cannot be compared. "
            "Open it with the same encoder, or index into a new workspace"
        )
    if ver is not None and ver.name != config.verifier_name:
        raise WorkspaceMismatchError(
            f"{root}: its parents keep the local features of verifier {config.verifier_name!r}; "
            f"{ver.name!r} cannot read them. Open it with the same verifier"
        )
    if index_factory is not None and index_factory != config.index_factory:
        raise ConfigurationError(
            f"{root}: the index is {config.index_factory!r}; index_factory={index_factory!r} "
            "only applies to new workspaces"
        )
    if seg is not None and seg.name != config.segmenter_name:
        logger.info("workspace %s was segmented with %s; new images use %s", root, config.segmenter_name, seg.name)

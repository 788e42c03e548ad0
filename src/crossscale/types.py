"""Value types shared by every stage: ``image → chunks → vectors → hits → parents``.

This module is the only one the stages have in common. It imports nothing from
them, so any stage can be replaced by a user's own class.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from crossscale._checks import positive_int
from crossscale._forward import Forward
from crossscale.errors import ConfigurationError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "Box",
    "Chunk",
    "ChunkDetails",
    "ChunkKind",
    "ChunkRecord",
    "Hit",
    "HitArrays",
    "IndexFailure",
    "IndexReport",
    "ParentMatch",
    "Query",
    "SearchMeasurement",
    "SearchParams",
    "SearchResult",
    "SearchTuning",
]

ChunkKind = Literal["whole", "detection", "tile"]
CHUNK_KINDS: tuple[str, ...] = ("whole", "detection", "tile")


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in a parent's pixel coordinates, ``x0 <= x < x1``, ``y0 <= y < y1``.

    Coordinates are integers; ``x1``/``y1`` are exclusive, as in ``PIL.Image.crop``.
    """

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "x1", "y1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"Box.{name} must be an int, got {value!r}")
        if self.x0 < 0 or self.y0 < 0:
            raise ConfigurationError(f"Box has negative coordinates: {self.as_tuple()}")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ConfigurationError(f"Box is empty: {self.as_tuple()} (needs x1 > x0 and y1 > y0)")

    @classmethod
    def from_floats(cls, x0: float, y0: float, x1: float, y1: float, *, width: int, height: int) -> Box:
        """Round float coordinates outwards and clip them to an image of ``width`` x ``height``.

        Raises:
            ConfigurationError: if nothing of the box lies inside the image.
        """
        values = (x0, y0, x1, y1)
        if not all(math.isfinite(v) for v in values):
            raise ConfigurationError(f"box coordinates must be finite, got {values}")
        ix0 = max(0, min(width, math.floor(x0)))
        iy0 = max(0, min(height, math.floor(y0)))
        ix1 = max(0, min(width, math.ceil(x1)))
        iy1 = max(0, min(height, math.ceil(y1)))
        return cls(ix0, iy0, ix1, iy1)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``, the order ``PIL.Image.crop`` takes."""
        return (self.x0, self.y0, self.x1, self.y1)

    def intersection_area(self, other: Box) -> int:
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return max(0, w) * max(0, h)

    def iou(self, other: Box) -> float:
        """Intersection over union, in ``[0, 1]``."""
        inter = self.intersection_area(other)
        return inter / (self.area + other.area - inter)

    def pad(self, fraction: float, *, width: int, height: int) -> Box:
        """Grow each side by ``fraction`` of the box's size, clipped to the image."""
        if not math.isfinite(fraction) or fraction < 0:
            raise ConfigurationError(f"pad fraction must be >= 0, got {fraction!r}")
        dx = self.width * fraction
        dy = self.height * fraction
        return Box.from_floats(self.x0 - dx, self.y0 - dy, self.x1 + dx, self.y1 + dy, width=width, height=height)

    def to_json(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    @classmethod
    def from_json(cls, value: list[int]) -> Box:
        """A box from ``[x0, y0, x1, y1]``, validated."""
        x0, y0, x1, y1 = value
        return cls(int(x0), int(y0), int(x1), int(y1))

    @staticmethod
    def _trusted(x0: int, y0: int, x1: int, y1: int) -> Box:
        """Build without validation, for boxes read back from crossscale's own store (hot path: a search builds
        one per match; the slots are set directly, ~half the cost of ``object.__setattr__``)."""
        box = _new(Box)
        _set_x0(box, x0)
        _set_y0(box, y0)
        _set_x1(box, x1)
        _set_y1(box, y1)
        return box


_new = object.__new__
_set_x0, _set_y0, _set_x1, _set_y1 = (Box.__dict__[name].__set__ for name in ("x0", "y0", "x1", "y1"))


@dataclass(frozen=True, slots=True, eq=False)
class Chunk:
    """A crop of a parent image that gets its own vector.

    Attributes:
        box: where the crop lies in the parent, in the parent's pixels.
        image: the cropped RGB image, or ``None`` when the segmenter proposes the box only (the pipeline
            crops it when the encoder needs pixels).
        kind: ``"whole"`` (the parent itself), ``"detection"`` or ``"tile"``.
        label: the detector's class name, for detections.
        confidence: the detector's confidence, for detections.
    """

    box: Box
    image: Image.Image | None
    kind: ChunkKind
    label: str | None = None
    confidence: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in CHUNK_KINDS:
            raise ConfigurationError(f"Chunk.kind must be one of {CHUNK_KINDS}, got {self.kind!r}")


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """What a workspace keeps of one chunk (its vector is stored beside it): the one shape of chunk data
    after indexing. A :class:`Hit` is a record plus a score.

    Attributes:
        chunk_id: the chunk's 64-bit id, assigned by the store.
        parent_id: the parent image the chunk was cut from.
        box: the chunk's box in the parent.
        kind, label, confidence: as in :class:`Chunk`.
    """

    chunk_id: int
    parent_id: str
    box: Box
    kind: ChunkKind
    label: str | None = None
    confidence: float | None = None

    def to_json(self) -> bytes:
        """The stored form (JSON; the id is the key, not part of the value)."""
        return json.dumps(
            {"p": self.parent_id, "b": self.box.to_json(), "k": self.kind, "l": self.label, "c": self.confidence}
        ).encode()

    @classmethod
    def from_json(cls, chunk_id: int, raw: bytes, *, validate: bool = False) -> ChunkRecord:
        """Decode a stored record. Searches trust the store's own boxes; ``validate=True`` checks them."""
        d = json.loads(raw.decode())  # str: skips json's encoding detection
        box = Box.from_json(d["b"]) if validate else Box._trusted(*d["b"])
        if validate and max(box.x1, box.y1) > MAX_COORDINATE:
            raise ValueError(f"box {box.as_tuple()} lies beyond {MAX_COORDINATE}, the most a stored box holds")
        if validate and d["k"] not in CHUNK_KINDS:
            raise ValueError(f"unknown chunk kind {d['k']!r}")
        return cls(chunk_id, d["p"], box, d["k"], d.get("l"), d.get("c"))


#: the largest coordinate a stored box holds (chunk details keep boxes as int32)
MAX_COORDINATE = (1 << 31) - 1

_DETAILS_HEADER = struct.Struct("<2sI")  # magic, chunk count; then int32 boxes, uint8 kinds, int32 labels, JSON
_DETAILS_MAGIC = b"D1"


@dataclass(frozen=True, slots=True, eq=False)
class ChunkDetails:
    """The boxes, kinds and labels of some chunks as arrays: what ranking needs of their records, without them.

    A workspace keeps these for every chunk in RAM (its :class:`~crossscale.index.ParentMap`), so that a search
    builds its matches with numpy instead of decoding records; the store keeps one per parent beside its record.

    Attributes:
        boxes: int64 ``(n, 4)``: ``x0, y0, x1, y1`` of each chunk.
        kinds: uint8 ``(n,)``: positions in :data:`CHUNK_KINDS`; :attr:`UNKNOWN` where a chunk's details are not
            known (then only its record has them).
        labels: int32 ``(n,)``: positions in ``vocabulary``, ``-1`` for no label.
        vocabulary: the label strings.
    """

    boxes: np.ndarray
    kinds: np.ndarray
    labels: np.ndarray
    vocabulary: tuple[str, ...] = ()

    UNKNOWN = 255

    def __len__(self) -> int:
        return int(self.kinds.shape[0])

    @classmethod
    def of(cls, chunks: Sequence[Chunk | ChunkRecord]) -> ChunkDetails:
        """The details of these chunks (or records), in their order."""
        vocabulary: dict[str, int] = {}
        labels = [-1 if c.label is None else vocabulary.setdefault(c.label, len(vocabulary)) for c in chunks]
        return cls(
            np.array([c.box.as_tuple() for c in chunks], dtype=np.int64).reshape(-1, 4),
            np.array([CHUNK_KINDS.index(c.kind) for c in chunks], dtype=np.uint8),
            np.array(labels, dtype=np.int32),
            tuple(vocabulary),
        )

    @classmethod
    def unknown(cls, n: int) -> ChunkDetails:
        """Details of ``n`` chunks that are not known (each one's record must be read)."""
        return cls(np.zeros((n, 4), np.int64), np.full(n, cls.UNKNOWN, np.uint8), np.full(n, -1, np.int32))

    @property
    def known(self) -> np.ndarray:
        """Which chunks' details are known (bool ``(n,)``)."""
        return np.asarray(self.kinds != self.UNKNOWN)

    def kind(self, i: int) -> ChunkKind:
        """The kind of chunk ``i`` (its details must be known)."""
        return CHUNK_KINDS[int(self.kinds[i])]  # type: ignore[return-value]

    def label(self, i: int) -> str | None:
        """The label of chunk ``i``, or ``None``."""
        code = int(self.labels[i])
        return None if code < 0 else self.vocabulary[code]

    def label_names(self) -> list[str | None]:
        """Every chunk's label, or ``None``: :meth:`label` of each, in one pass (compares the labels of details
        whose vocabularies differ)."""
        vocabulary = self.vocabulary
        return [None if code < 0 else vocabulary[code] for code in self.labels.tolist()]

    def box(self, i: int) -> Box:
        """The box of chunk ``i``."""
        x0, y0, x1, y1 = self.boxes[i].tolist()
        return Box._trusted(x0, y0, x1, y1)

    def to_bytes(self) -> bytes:
        """The stored form: a header, int32 boxes, uint8 kinds, int32 labels, then the vocabulary as JSON."""
        n = len(self)
        return b"".join(
            (
                _DETAILS_HEADER.pack(_DETAILS_MAGIC, n),
                np.ascontiguousarray(self.boxes, dtype="<i4").tobytes(),
                np.ascontiguousarray(self.kinds, dtype=np.uint8).tobytes(),
                np.ascontiguousarray(self.labels, dtype="<i4").tobytes(),
                json.dumps(list(self.vocabulary)).encode(),
            )
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ChunkDetails:
        """Decode :meth:`to_bytes`.

        Raises:
            ValueError: ``raw`` is not such a value (wrong header, length, kind or label).
        """
        if len(raw) < _DETAILS_HEADER.size:
            raise ValueError(f"chunk details of {len(raw)} bytes are shorter than their header")
        magic, n = _DETAILS_HEADER.unpack_from(raw)
        if magic != _DETAILS_MAGIC:
            raise ValueError(f"chunk details start with {magic!r}, not {_DETAILS_MAGIC!r}")
        at = _DETAILS_HEADER.size
        end = at + n * 21
        if len(raw) < end:
            raise ValueError(f"chunk details of {n} chunks need {end} bytes, got {len(raw)}")
        boxes = np.frombuffer(raw, "<i4", n * 4, at).reshape(n, 4).astype(np.int64)
        kinds = np.frombuffer(raw, np.uint8, n, at + n * 16).copy()
        labels = np.frombuffer(raw, "<i4", n, at + n * 17).astype(np.int32)
        vocabulary = json.loads(raw[end:].decode())
        if not isinstance(vocabulary, list) or not all(isinstance(v, str) for v in vocabulary):
            raise ValueError("chunk details' vocabulary is not a list of strings")
        if n and (kinds.max() >= len(CHUNK_KINDS) or labels.min() < -1 or labels.max() >= len(vocabulary)):
            raise ValueError("chunk details hold a kind or label code out of range")
        return cls(boxes, kinds, labels, tuple(vocabulary))


@dataclass(frozen=True, slots=True, init=False)
class Hit:
    """One chunk returned by a vector search: its record and its score.

    ``Hit(record, score)``. The record's fields are readable on the hit itself (``hit.parent_id``, ``hit.box``).

    Attributes:
        record: the chunk's :class:`ChunkRecord`.
        score: the inner product of query and chunk vectors (cosine similarity).
    """

    record: ChunkRecord
    score: float

    def __init__(self, record: ChunkRecord, score: float, *legacy: Any) -> None:
        if not isinstance(record, ChunkRecord):
            # crossscale 0.1: Hit(chunk_id, score, parent_id, box, kind, label=None, confidence=None)
            warnings.warn(
                "Hit(chunk_id, score, parent_id, box, kind, ...) is deprecated; use Hit(ChunkRecord(chunk_id, "
                "parent_id, box, kind, ...), score)",
                DeprecationWarning,
                stacklevel=2,
            )
            record = ChunkRecord(record, *legacy)
        elif legacy:
            raise TypeError(f"Hit takes (record, score), got {2 + len(legacy)} arguments")
        object.__setattr__(self, "record", record)
        object.__setattr__(self, "score", float(score))

    chunk_id = Forward[int]("record")
    parent_id = Forward[str]("record")
    box = Forward[Box]("record")
    kind = Forward[ChunkKind]("record")
    label = Forward["str | None"]("record")
    confidence = Forward["float | None"]("record")


class HitArrays(Sequence[Hit]):
    """One query's chunk hits as arrays, best first, whose records are read only when a :class:`Hit` is asked for.

    The query path hands these to the ranker when it knows every chunk's parent in bulk (a
    :class:`~crossscale.protocols.ChunkParents`, such as a workspace's). :class:`~crossscale.rank.ParentRanker`
    folds the arrays with numpy and reads records only for the parents it returns; any other ranker sees the
    ``Sequence[Hit]`` that :data:`~crossscale.protocols.FetchHits` promises (the first access reads every
    record, and hits whose record is gone are left out, as in a list the query path builds itself).

    Attributes:
        scores: float32 similarities, best first.
        chunk_ids: int64 chunk ids.
        parents: int64 parent codes of the chunks (:meth:`parent_id` names them); all ``>= 0``.
        fetched: how many hits the index returned for this query (all of them are here).
        details: chunk ids → their :class:`ChunkDetails`, when known in bulk (a workspace's parent map): then
            the ranker builds its matches from those instead of reading records.
    """

    __slots__ = ("_hits", "_parent_id", "_records", "chunk_ids", "details", "parents", "scores")

    def __init__(
        self,
        scores: np.ndarray,
        chunk_ids: np.ndarray,
        parents: np.ndarray,
        parent_id: Callable[[int], str],
        records: Callable[[Iterable[int]], Mapping[int, ChunkRecord]],
        *,
        details: Callable[[np.ndarray], ChunkDetails] | None = None,
    ) -> None:
        if not scores.shape == chunk_ids.shape == parents.shape or scores.ndim != 1:
            raise ConfigurationError(
                f"HitArrays needs three 1-D arrays of one length, got {scores.shape}, {chunk_ids.shape}, "
                f"{parents.shape}"
            )
        self.scores = scores
        self.chunk_ids = chunk_ids
        self.parents = parents
        self._parent_id = parent_id
        self._records = records
        self.details = details
        self._hits: list[Hit] | None = None

    @property
    def fetched(self) -> int:
        return int(self.scores.shape[0])

    def parent_id(self, code: int) -> str:
        """The parent id of a code in :attr:`parents`."""
        return self._parent_id(int(code))

    def hits_at(self, positions: Sequence[int]) -> dict[int, Hit]:
        """The hits at these positions, read in one lookup; a position whose record is gone is left out."""
        at = list(positions)
        ids = self.chunk_ids[at].tolist()
        scores = self.scores[at].tolist()
        found = self._records(ids)
        return {
            p: Hit(record, score)
            for p, cid, score in zip(positions, ids, scores, strict=True)
            if (record := found.get(cid)) is not None
        }

    def _all(self) -> list[Hit]:
        if self._hits is None:
            found = self.hits_at(range(self.fetched))
            self._hits = [found[p] for p in range(self.fetched) if p in found]
        return self._hits

    def __len__(self) -> int:
        return len(self._all())

    @overload
    def __getitem__(self, item: int) -> Hit: ...

    @overload
    def __getitem__(self, item: slice) -> Sequence[Hit]: ...

    def __getitem__(self, item: int | slice) -> Hit | Sequence[Hit]:
        return self._all()[item]

    def __iter__(self) -> Iterator[Hit]:
        return iter(self._all())

    def __repr__(self) -> str:
        return f"HitArrays(fetched={self.fetched}, best={float(self.scores[0]) if self.fetched else None})"


@dataclass(frozen=True, slots=True, eq=False)
class Query:
    """A query as the search path sees it: its unit vector, and its image or text.

    Attributes:
        vector: the query's embedding, a 1-D float32 unit vector.
        image: the query image (RGB) as decoded; ``None`` for a text query.
        text: the query text, for a text query.
    """

    vector: np.ndarray
    image: Image.Image | None = None
    text: str | None = None

    @property
    def aspect(self) -> float | None:
        """The image's width / height, or ``None`` without an image."""
        return None if self.image is None else self.image.width / max(1, self.image.height)


@dataclass(frozen=True, slots=True)
class ParentMatch:
    """A parent image ranked for a query. Higher ``score`` is better.

    Attributes:
        parent_id: id of the parent image.
        score: the ranker's aggregate of the parent's chunk scores.
        box: *where* the query is, in the parent's pixels: the best chunk's box, a fusion of the near-best
            chunks' boxes, or the crop a :class:`~crossscale.rank.RegionRefiner` found (``ParentRanker(box=)``).
        kind, label: of the best chunk.
        chunk_score: similarity of the best chunk alone.
        chunk_id: id of the best chunk.
        n_hits: how many of the parent's chunks were among the retrieved hits.
        inliers: for a match a verifier confirmed, the local-feature correspondences that agree on where the query
            lies (its box is then the query's projected outline); ``None`` when not verified.
    """

    parent_id: str
    score: float
    box: Box
    kind: ChunkKind
    chunk_score: float
    chunk_id: int
    n_hits: int = 1
    label: str | None = None
    inliers: int | None = None
    _loader: Callable[[str], Image.Image] | None = field(default=None, repr=False, compare=False)

    def image(self) -> Image.Image:
        """The parent image, read from the workspace that produced this match.

        Raises:
            CrossScaleError: if this match was not produced by a workspace.
        """
        if self._loader is None:
            raise ConfigurationError("this ParentMatch is not attached to a workspace; use CrossScaleSearch.search")
        return self._loader(self.parent_id)

    @staticmethod
    def _trusted(
        parent_id: str,
        score: float,
        box: Box,
        kind: ChunkKind,
        chunk_score: float,
        chunk_id: int,
        n_hits: int,
        label: str | None,
    ) -> ParentMatch:
        """``ParentMatch(...)`` with the slots set directly: a ranker's hot path builds one per parent returned
        (640 for 64 queries), at ~half the cost of the dataclass ``__init__``. Equal to it (tested)."""
        match = _new(ParentMatch)
        _set_parent_id(match, parent_id)
        _set_score(match, score)
        _set_box(match, box)
        _set_kind(match, kind)
        _set_chunk_score(match, chunk_score)
        _set_chunk_id(match, chunk_id)
        _set_n_hits(match, n_hits)
        _set_label(match, label)
        _set_inliers(match, None)
        _set_loader(match, None)
        return match

    def _attached(self, loader: Callable[[str], Image.Image]) -> ParentMatch:
        """This match reading its image with ``loader``.

        A match attached to no workspace yet is one the search that calls this has just built: the loader is
        set on it in place (the field is outside equality and hashing), which costs a twentieth of a copy. A
        match attached elsewhere is copied.
        """
        if self._loader is None or self._loader is loader:
            object.__setattr__(self, "_loader", loader)
            return self
        return dataclasses.replace(self, _loader=loader)

    def crop(self) -> Image.Image:
        """The region of the parent image where the query was found."""
        return self.image().crop(self.box.as_tuple())

    def _repr_html_(self) -> str:
        """The parent with its box, for notebooks (never raises)."""
        from crossscale.display import results_html

        return results_html([self])

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "parent_id": self.parent_id,
            "score": self.score,
            "box": self.box.to_json(),
            "kind": self.kind,
            "label": self.label,
            "chunk_score": self.chunk_score,
            "chunk_id": self.chunk_id,
            "n_hits": self.n_hits,
            "inliers": self.inliers,
        }


(
    _set_parent_id,
    _set_score,
    _set_box,
    _set_kind,
    _set_chunk_score,
    _set_chunk_id,
    _set_n_hits,
    _set_label,
    _set_inliers,
    _set_loader,
) = (ParentMatch.__dict__[f.name].__set__ for f in dataclasses.fields(ParentMatch))


class SearchResult(list["ParentMatch"]):
    """The ranked parents of one query, best first: a ``list`` of :class:`ParentMatch` that also knows its query.

    In a notebook it draws itself: the query beside each parent with its box, rank, score and id. ``show()``
    returns the same picture as a PIL image (:func:`crossscale.display.show`).

    Attributes:
        query: the query image or text, when known.
    """

    def __init__(self, matches: Iterable[ParentMatch] = (), query: Image.Image | str | None = None) -> None:
        super().__init__(matches)
        self.query = query

    def show(self, *, cell: int = 256, columns: int | None = None) -> Image.Image:
        """The results as a picture (see :func:`crossscale.display.show`)."""
        from crossscale.display import show

        return show(self, cell=cell, columns=columns)

    def _repr_html_(self) -> str:
        from crossscale.display import results_html

        return results_html(self)


@dataclass(frozen=True, slots=True)
class SearchParams:
    """How hard one search looks, for that call only: the index's own settings and other searches are untouched.

    Give it to a search (``cs.search(query, params=SearchParams(nprobe=64))``,
    :meth:`crossscale.index.ChunkIndex.search`) to trade parent recall for speed per call, e.g. a fast first page
    and a thorough second one, or two services sharing one index. A setting that does not apply to the index's
    structure is ignored (a workspace's ``"auto"`` index changes structure as it grows: ``Flat`` has none).

    Attributes:
        nprobe: IVF lists searched per query (faiss' ``nprobe``); ``None``: the index's own (``"auto"``: its
            plan's). Search time grows about in proportion.
        ef_search: the width of an HNSW graph's search beam: the graph holding the vectors (``HNSW32``...) or an
            IVF index's coarse quantizer (``IVF16384_HNSW32,...``); ``None``: the index's own, and for a coarse
            quantizer with ``nprobe`` given, ``2 * nprobe`` (as :func:`crossscale.index.search_params` sets it).
            An HNSW index widens it to the hits asked for, as it always does. A large batch searched list by list
            finds its lists by scoring every centroid where the beam would cost more (its exact nearest lists:
            ``crossscale.index._list_scan.exact_coarse_pays``), so a beam wider than that changes nothing there.
        rescore: whether a workspace search scores the hits of an index whose scores are approximate (SQ8 or PQ
            codes, projected vectors) again against the stored vectors before ranking; ``None``: the facade's
            :attr:`~crossscale.CrossScaleSearch.rescore`. Not the index's setting: an index searched directly
            ignores it.
        rescore_per_parent: when hits are re-scored, score only each parent's first this many hits (by the
            index's scores) against the stored vectors; its other hits keep the index's scores, capped at the
            lowest of its re-scored ones, so that a parent's best hit is always scored exactly. ``None``: every
            hit (set it on :attr:`~crossscale.CrossScaleSearch.search_params` for every search). At 10M
            alike regions, 1, 2 or 4 per parent found the parents that re-scoring every hit found (recall@10
            0.987 at 128 lists) while reading a fifth to two fifths of the vectors (docs/benchmarks.md,
            "Re-scoring each parent's best hits").

    Raises:
        ConfigurationError: ``nprobe``, ``ef_search`` or ``rescore_per_parent`` that is not a positive int,
            ``rescore`` not a bool.
    """

    nprobe: int | None = None
    ef_search: int | None = None
    rescore: bool | None = None
    rescore_per_parent: int | None = None

    def __post_init__(self) -> None:
        for name in ("nprobe", "ef_search", "rescore_per_parent"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, positive_int(f"SearchParams.{name}", value))
        if self.rescore is not None and not isinstance(self.rescore, bool):
            raise ConfigurationError(f"SearchParams.rescore must be True, False or None, got {self.rescore!r}")

    def for_index(self) -> SearchParams | None:
        """What of these settings an index's ``search(params=)`` takes: ``nprobe`` and ``ef_search``, or ``None``
        where neither is given (so that a setting of the facade's alone asks nothing of an index); these settings
        themselves where they hold no other."""
        if self.nprobe is None and self.ef_search is None:
            return None
        if self.rescore is None and self.rescore_per_parent is None:
            return self
        return SearchParams(nprobe=self.nprobe, ef_search=self.ef_search)

    def over(self, base: SearchParams) -> SearchParams:
        """These settings, each one not given (``None``) taken from ``base``: a call's settings over a facade's
        :attr:`~crossscale.CrossScaleSearch.search_params`."""
        taken = {f.name: getattr(base, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is None}
        return dataclasses.replace(self, **taken) if any(v is not None for v in taken.values()) else self

    def describe(self) -> str:
        """The settings given, e.g. ``"nprobe=128 rescore=False"``; ``"own"`` where none is."""
        values = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]
        return " ".join(f"{name}={value}" for name, value in values if value is not None) or "own"

    @staticmethod
    def checked(params: object, name: str = "params") -> SearchParams | None:
        """``params`` as a search's ``params=`` argument takes it: a :class:`SearchParams` or ``None``.

        Raises:
            ConfigurationError: anything else, naming ``name`` and its type.
        """
        if params is not None and not isinstance(params, SearchParams):
            raise ConfigurationError(
                f"{name} must be a crossscale.types.SearchParams or None, got {type(params).__name__}"
            )
        return params


@dataclass(frozen=True, slots=True)
class SearchMeasurement:
    """How one search setting did on a set of queries (:meth:`crossscale.CrossScaleSearch.measure_search`).

    Attributes:
        params: the setting measured, over the facade's ``search_params`` (``None``: what searches used).
        recall: parent recall@``top_k``: the mean, over the queries, of the share of each query's exact
            ``top_k`` parents (an exhaustive search of the stored vectors, each parent ranked by its best chunk)
            that the search returned.
        seconds: wall time of one search of all the queries as one batch (the fastest of the repeats).
        queries: how many queries were searched.
        single_ms: the wall times of the first queries searched one at a time, in milliseconds (empty unless
            asked for: ``measure_search(singles=n)``); :attr:`single_p50_ms` and :attr:`single_p95_ms` sum them up.
    """

    params: SearchParams | None
    recall: float
    seconds: float
    queries: int
    single_ms: tuple[float, ...] = ()

    @property
    def single_p50_ms(self) -> float | None:
        """The median time of one query searched alone (ms); ``None`` if none was."""
        return float(np.percentile(self.single_ms, 50)) if self.single_ms else None

    @property
    def single_p95_ms(self) -> float | None:
        """The 95th percentile of one query searched alone (ms); ``None`` if none was."""
        return float(np.percentile(self.single_ms, 95)) if self.single_ms else None

    @property
    def queries_per_second(self) -> float:
        """Throughput of the batch: queries per second of wall time."""
        return self.queries / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (the settings as ``nprobe``, ``ef_search`` and ``rescore``, ``None`` where not
        given)."""
        return {
            **dataclasses.asdict(self.params if self.params is not None else SearchParams()),
            "recall": self.recall,
            "seconds": self.seconds,
            "queries": self.queries,
            "queries_per_second": self.queries_per_second,
            "single_p50_ms": self.single_p50_ms,
            "single_p95_ms": self.single_p95_ms,
        }


@dataclass(frozen=True, slots=True)
class SearchTuning:
    """What :meth:`crossscale.CrossScaleSearch.tune_search` found: each setting's measurement, and the fastest of
    those whose parent recall reached ``min_recall``.

    Attributes:
        min_recall: the parent recall@k asked for.
        measurements: one :class:`SearchMeasurement` per setting tried, in the order tried.
        chosen: the fastest of them that reached ``min_recall``; ``None`` where none did.
    """

    min_recall: float
    measurements: tuple[SearchMeasurement, ...]
    chosen: SearchMeasurement | None

    @property
    def params(self) -> SearchParams | None:
        """The chosen setting, for searches' ``params=``; ``None`` where no setting reached ``min_recall``."""
        return None if self.chosen is None else self.chosen.params

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict: ``min_recall``, ``chosen`` (its measurement's dict, or ``None``), ``measurements``."""
        return {
            "min_recall": self.min_recall,
            "chosen": None if self.chosen is None else self.chosen.to_dict(),
            "measurements": [m.to_dict() for m in self.measurements],
        }


@dataclass(frozen=True, slots=True)
class IndexFailure:
    """An input that could not be indexed, and why.

    ``parent_id`` is set when the failure came after the input was read (segmenting, encoding, storing).
    """

    source: str
    reason: str
    error_type: str
    parent_id: str | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class IndexReport:
    """What :meth:`CrossScaleSearch.index` did.

    Attributes:
        added: parent ids newly indexed.
        present: parent ids that were already in the workspace (skipped).
        failed: inputs that could not be indexed, each with the reason.
        chunks_added: number of chunk vectors added.
        seconds: wall time.
    """

    added: tuple[str, ...] = ()
    present: tuple[str, ...] = ()
    failed: tuple[IndexFailure, ...] = ()
    chunks_added: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed

    @property
    def images_per_second(self) -> float:
        """Throughput: inputs handled (added, present or failed) per second of wall time."""
        handled = len(self.added) + len(self.present) + len(self.failed)
        return handled / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "added": list(self.added),
            "present": list(self.present),
            "failed": [f.to_dict() for f in self.failed],
            "chunks_added": self.chunks_added,
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
        }

    def __str__(self) -> str:
        return (
            f"added {len(self.added)}, already present {len(self.present)}, "
            f"failed {len(self.failed)}, chunks {self.chunks_added} in {self.seconds:.1f}s "
            f"({self.images_per_second:.2f} img/s)"
        )

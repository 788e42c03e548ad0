"""The stage interfaces. Any object with these members can serve as that stage; none needs to subclass anything.

The data path, and the protocol that owns each arrow::

    image ──Segmenter──▶ chunks ──Encoder──▶ vectors ──VectorIndex──▶ hits ──Ranker──▶ parents ──Refiner──▶ parents

Stages depend on this module and on :mod:`crossscale.types` only, never on each other, so any one of them can
be replaced by a user's own class. :func:`check_stage` is how the facade tells a user which member their
object lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from crossscale.errors import ConfigurationError
from crossscale.types import Box, Chunk, ChunkDetails, ChunkRecord, Hit, ParentMatch, Query

__all__ = [
    "BatchRanker",
    "BoxMap",
    "CandidateFinder",
    "ChunkParents",
    "DescriptorVerifier",
    "DetailsLookup",
    "Encoder",
    "FeatureLoader",
    "FetchHits",
    "GroupedVectorIndex",
    "MapEncoder",
    "ParentLoader",
    "Ranker",
    "RecordLookup",
    "Refiner",
    "RegionEncoder",
    "Segmenter",
    "TextEncoder",
    "VectorIndex",
    "VectorLookup",
    "Verifier",
    "check_stage",
]

FetchHits = Callable[[int], Sequence[Hit]]
"""``fetch(k)`` returns the best ``k`` chunk hits of one query, best first (fewer if fewer exist)."""

ParentLoader = Callable[[str], "Image.Image | None"]
"""``load(parent_id)`` returns the parent image as it was indexed, or ``None`` if the parent is gone."""

RecordLookup = Callable[[Iterable[int]], Mapping[int, ChunkRecord]]
"""``records(chunk_ids)`` returns the stored record of each id; ids with no record are left out."""

FeatureLoader = Callable[[str], "bytes | None"]
"""``features(parent_id)`` returns what a :class:`Verifier` extracted from the parent, or ``None``."""

DetailsLookup = Callable[[np.ndarray], ChunkDetails]
"""``details(chunk_ids)`` (a 1-D int64 array) returns their boxes, kinds and labels in that order, unknown for ids
it does not know (a workspace's :meth:`~crossscale.index.ParentMap.details`)."""

CandidateFinder = Callable[[Query, Set[str]], Sequence[ParentMatch]]
"""``candidates(query, ranked)`` returns matches for parents found by another route than the query's vector (e.g.
its local features), leaving out the parent ids in ``ranked``; the query path verifies them and keeps the verified
ones (``crossscale.query.search_parents``)."""

VectorLookup = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]
"""``vectors(chunk_ids)`` (an int64 array, in any order, an id possibly more than once) returns ``(ids, vectors)`` of
the given ids that are stored, in the order given (``RootStore.vectors``). Re-scoring works with any order or with
repeats left out; a lookup that returns every id asked, in the order asked, saves it finding each hit by id."""


@runtime_checkable
class Segmenter(Protocol):
    """Cuts images into chunks (``image → chunks``).

    ``segment`` takes a batch of RGB images and returns, for each image in order, its chunks; boxes are in that
    image's pixel coordinates and lie inside it. A chunk's ``image`` may be ``None``: the pipeline then crops
    the box itself when the encoder needs pixels.
    """

    @property
    def name(self) -> str:
        """A short description recorded in the workspace, e.g. ``"whole+tiles"``."""
        ...

    def segment(self, images: Sequence[Image.Image]) -> list[list[Chunk]]: ...


@runtime_checkable
class Encoder(Protocol):
    """Embeds images (``chunks → vectors``, and the query).

    ``encode`` returns a float32 array of shape ``(len(images), dim)``; equal images give equal rows. The
    built-in encoders return unit rows; crossscale L2-normalises whatever an encoder returns, in one place
    (:func:`crossscale._vectors.embed`), so a user's encoder need not.
    """

    @property
    def name(self) -> str:
        """Identity recorded in the workspace; vectors of encoders with different names are not comparable."""
        ...

    @property
    def dim(self) -> int:
        """Length of each vector."""
        ...

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray: ...


@runtime_checkable
class RegionEncoder(Encoder, Protocol):
    """An :class:`Encoder` that embeds many boxes of one image at once, e.g. pooled from one feature map.

    ``encode_regions(image, boxes)`` returns float32 rows of shape ``(len(boxes), dim)``, comparable with the
    vectors ``encode`` gives queries. When a workspace's encoder has it, indexing calls it once per image with
    the segmenter's boxes instead of encoding a crop per box: the segmenter only proposes boxes.
    """

    def encode_regions(self, image: Image.Image, boxes: Sequence[Box]) -> np.ndarray: ...


@runtime_checkable
class BoxMap(Protocol):
    """One forward pass over a window of an image, from which any box inside the window is embedded.

    ``pool(boxes)`` returns float32 rows of shape ``(len(boxes), dim)``; boxes are in the image's pixel
    coordinates and lie inside :attr:`window`.
    """

    @property
    def window(self) -> Box: ...

    def pool(self, boxes: Sequence[Box]) -> np.ndarray: ...


@runtime_checkable
class MapEncoder(Encoder, Protocol):
    """An :class:`Encoder` that can embed many boxes of one image from one forward pass, each about as ``encode``
    embeds the box's crop: what the :class:`~crossscale.rank.MapRefiner` searches boxes with.

    ``window_map(image, window, crop_size)`` runs the network once over ``window`` of ``image``, scaled so that
    a crop of ``crop_size`` (width, height in image pixels) spans what ``encode`` feeds the network for a whole
    image; boxes of about that size pooled from it approximate their crops' vectors (the network sees past a
    box's edges, so they are not equal).
    """

    def window_map(self, image: Image.Image, window: Box, crop_size: tuple[float, float]) -> BoxMap: ...


@runtime_checkable
class TextEncoder(Encoder, Protocol):
    """An :class:`Encoder` that also embeds texts into the same space (CLIP, SigLIP): text queries need one.

    ``encode_text`` returns float32 rows of shape ``(len(texts), dim)``, comparable with ``encode``'s.
    """

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class VectorIndex(Protocol):
    """Chunk vectors searched by inner product (``vectors → hits``); :class:`~crossscale.index.ChunkIndex` is one.

    ``search`` returns ``(scores, ids)`` of shape ``(n, k)``, best first, padded with ``-inf`` and ``-1`` where
    fewer than ``k`` vectors exist, as FAISS does.
    """

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None: ...

    def remove(self, ids: Iterable[int]) -> int: ...

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def ids(self) -> np.ndarray: ...


@runtime_checkable
class GroupedVectorIndex(VectorIndex, Protocol):
    """A :class:`VectorIndex` that also finds the best chunks of the ``groups`` best distinct parents of each query
    (Milvus' ``group_by_field``; :class:`~crossscale.index.MilvusChunkIndex` is one).

    ``search_grouped(vectors, groups, group_size)`` ranks parents by their best chunk and returns up to
    ``group_size`` chunks of each, flattened and sorted best first, as ``(scores, ids)`` of shape
    ``(n, groups * group_size)`` padded like ``search``. The query path uses it for a ranker whose
    ``group_size`` is set: one search then returns ``top_k`` distinct parents however alike their chunks are.
    """

    def search_grouped(self, vectors: np.ndarray, groups: int, group_size: int) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class ChunkParents(Protocol):
    """Chunk id → parent for a whole array of ids at once (:class:`~crossscale.index.ParentMap` is one).

    Given to the query path beside the records, it lets the ranker fold a batch's hits with numpy and read
    records only for the parents it returns. ``parent_codes`` maps ids (any shape) to integer parent codes,
    ``-1`` for an id of no parent; ``parent_id`` names a code.
    """

    def parent_codes(self, chunk_ids: np.ndarray) -> np.ndarray: ...

    def parent_id(self, code: int) -> str: ...


@runtime_checkable
class Ranker(Protocol):
    """Folds one query's chunk hits into ``top_k`` parents (``hits → parents``).

    ``overfetch`` is how many chunks per wanted parent the query path fetches up front for a whole batch of
    queries; ``rank`` may ask ``fetch`` for more.

    Optionally, a ``group_size`` attribute (int or ``None``): a ranker whose parent order depends on each
    parent's best chunk only (as ``"max"`` does) sets it to the chunks it wants per parent, and against a
    :class:`GroupedVectorIndex` the first fetch is then a grouped search for ``top_k`` distinct parents.
    """

    @property
    def overfetch(self) -> int: ...

    def rank(self, fetch: FetchHits, top_k: int, *, available: int) -> list[ParentMatch]: ...


@runtime_checkable
class BatchRanker(Ranker, Protocol):
    """A :class:`Ranker` that also folds many queries' hits at once (:class:`~crossscale.rank.ParentRanker`).

    ``rank_batch(scores, chunk_ids, parents, top_k, available=, parent_id=, details=, records=)`` gets 2-D arrays
    whose row ``r`` holds query ``r``'s first ``k`` hits, best first, with their parent codes (``-1``: padding or no
    parent), where ``k`` is a depth ``rank`` asks for (``top_k * overfetch``, doubled any number of times, at most
    ``available``). It returns, per query, what ``rank`` would return for it, or ``None`` where ``rank`` would ask
    for more hits: the query path then hands it those queries' first ``2 * k`` hits, and calls ``rank`` for a query
    whose searches do not reach that deep. ``details`` gives the chunks' boxes in bulk; ``records`` reads what they
    do not hold. The arrays may be read-only views of the search's own (copy one before writing to it).
    """

    def rank_batch(
        self,
        scores: np.ndarray,
        chunk_ids: np.ndarray,
        parents: np.ndarray,
        top_k: int,
        *,
        available: int,
        parent_id: Callable[[int], str],
        details: DetailsLookup,
        records: RecordLookup,
    ) -> list[list[ParentMatch] | None]: ...


@runtime_checkable
class Refiner(Protocol):
    """Re-scores or re-boxes the ranked parents of one query (``parents → parents``).

    ``load(parent_id)`` gives a parent's image as it was indexed (``None``: deleted since; drop that match).
    Returns the matches, re-sorted best first.
    """

    def refine(self, query: Query, matches: Sequence[ParentMatch], load: ParentLoader) -> list[ParentMatch]: ...


@runtime_checkable
class Verifier(Protocol):
    """Checks the ranked parents of one query geometrically (``parents → verified parents``).

    It has an indexing half and a query half. ``extract(image)`` returns what to keep of each parent (e.g. its
    local features), stored with the parent in the same transaction; ``verify(query, matches, features)`` checks
    the matches against it (``features(parent_id)`` gives those bytes back, or ``None``) and returns them
    re-sorted. ``name`` is recorded in the workspace, since what was stored depends on it.
    """

    @property
    def name(self) -> str: ...

    def extract(self, image: Image.Image) -> bytes: ...

    def verify(self, query: Query, matches: Sequence[ParentMatch], features: FeatureLoader) -> list[ParentMatch]: ...


@runtime_checkable
class DescriptorVerifier(Verifier, Protocol):
    """A :class:`Verifier` whose local features can also *find* parents, not only check them.

    ``descriptors(features)`` turns what ``extract`` stored of a parent into an (n, d) uint8 array of descriptors
    compared by L2 distance, and ``query_descriptors(query)`` gives the query's of the same kind. The facade keeps
    every parent's in a :class:`~crossscale.index.KeypointIndex` (``CrossScaleSearch(local_search=True)``).
    """

    def descriptors(self, features: bytes) -> np.ndarray: ...

    def query_descriptors(self, query: Query) -> np.ndarray: ...


def check_stage(stage: object, protocol: type, what: str) -> None:
    """Raise a :class:`ConfigurationError` naming each member of ``protocol`` that ``stage`` lacks."""
    if isinstance(stage, protocol):
        return
    members = sorted(getattr(protocol, "__protocol_attrs__", None) or _protocol_members(protocol))
    missing = [m for m in members if not hasattr(stage, m)]
    raise ConfigurationError(
        f"{what} {stage!r} does not satisfy crossscale.protocols.{protocol.__name__}: "
        f"it lacks {', '.join(repr(m) for m in missing) or 'a member'}"
    )


def _protocol_members(protocol: type) -> set[str]:
    """The members a protocol declares (Python < 3.12 has no ``__protocol_attrs__``)."""
    names: set[str] = set()
    for klass in protocol.__mro__[:-1]:
        if klass is Protocol or klass.__name__ in ("Protocol", "Generic"):
            continue
        names.update(n for n in vars(klass) if not n.startswith("_") or n == "__len__")
        names.update(getattr(klass, "__annotations__", {}))
    return names

"""The query path: ``query vectors → chunk hits → parents → refined parents``, one pure function.

:func:`search_parents` is the only implementation of a search. The facade calls it with its workspace's index,
records and images; the quality benchmark calls it with an in-memory index and a dict of records, so what is
measured is what ships.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from crossscale._checks import optional_finite, positive_int
from crossscale._vectors import embed
from crossscale.errors import ConfigurationError
from crossscale.protocols import (
    ChunkParents,
    Encoder,
    FeatureLoader,
    ParentLoader,
    Ranker,
    RecordLookup,
    Refiner,
    VectorIndex,
    Verifier,
)
from crossscale.types import Hit, HitArrays, ParentMatch, Query

__all__ = ["embed_queries", "search_parents"]


def embed_queries(encoder: Encoder, images: Sequence[Image.Image]) -> list[Query]:
    """Each image embedded whole, in one encoder call, as a :class:`~crossscale.types.Query`."""
    vectors = embed(encoder, images)
    return [Query(vector, image) for vector, image in zip(vectors, images, strict=True)]


def _hits(scores: np.ndarray, ids: np.ndarray, records: RecordLookup) -> list[Hit]:
    """Hits of one result row, best first; padding (-1) and ids no longer stored are left out."""
    valid = [(float(s), int(i)) for s, i in zip(scores, ids, strict=True) if i >= 0]
    found = records(i for _, i in valid)
    return [Hit(record, s) for s, i in valid if (record := found.get(i)) is not None]


def _hit_arrays(
    scores: np.ndarray, ids: np.ndarray, codes: np.ndarray, parents: ChunkParents, records: RecordLookup
) -> HitArrays:
    """Hits of one result row as arrays; padding (-1) and ids of no parent are left out."""
    keep = codes >= 0
    return HitArrays(scores[keep], ids[keep], codes[keep], parents.parent_id, records)


def search_parents(
    queries: Sequence[Query],
    top_k: int,
    *,
    index: VectorIndex,
    records: RecordLookup,
    ranker: Ranker,
    refiner: Refiner | None = None,
    load_parent: ParentLoader | None = None,
    min_score: float | None = None,
    verifier: Verifier | None = None,
    load_features: FeatureLoader | None = None,
    parents: ChunkParents | None = None,
) -> list[list[ParentMatch]]:
    """The ``top_k`` best parents of each query, best first.

    One index search serves the whole batch (``top_k * ranker.overfetch`` chunks per query); the ranker asks
    for more, one query at a time, only when those hold too few distinct parents. The verifier, if any, then
    checks the parents geometrically against their stored local features (``load_features``); the refiner, if
    any, re-scores the parents the verifier did not confirm, reading them with ``load_parent``. ``min_score``
    drops parents below it, last.

    Args:
        queries: the embedded queries (their vectors must be unit length and of the index's dimension).
        top_k: parents wanted per query.
        index: the chunk vectors.
        records: chunk id → record; hits whose record is gone (deleted since) are skipped.
        ranker: folds each query's hits into parents.
        refiner: re-scores the ranked parents; needs ``load_parent``.
        load_parent: parent id → its image, or ``None`` if it is gone.
        min_score: drop parents scoring below this, after refining.
        verifier: checks the ranked parents; needs ``load_features``.
        load_features: parent id → what the verifier stored of it, or ``None``.
        parents: chunk id → parent in bulk (a workspace's :class:`~crossscale.index.ParentMap`). With it the
            ranker gets :class:`~crossscale.types.HitArrays` and ``records`` is read only for the parents
            returned (the result is the same; issue #12 measured it); without it every hit's record is read.

    Raises:
        ConfigurationError: a bad ``top_k`` or ``min_score``, or a refiner without ``load_parent``.
    """
    top_k = positive_int("top_k", top_k)
    min_score = optional_finite("min_score", min_score)
    if refiner is not None and load_parent is None:
        raise ConfigurationError("a refiner needs load_parent to read the parents it re-scores")
    if verifier is not None and load_features is None:
        raise ConfigurationError("a verifier needs load_features to read what it stored of the parents")
    if not queries:
        return []
    vectors = np.stack([np.asarray(q.vector, dtype=np.float32).reshape(-1) for q in queries])
    available = len(index)
    first_k = max(1, min(available, top_k * ranker.overfetch))
    scores, ids = index.search(vectors, first_k)
    codes = None if parents is None else parents.parent_codes(ids)
    results: list[list[ParentMatch]] = []
    for row, query in enumerate(queries):

        def fetch(k: int, row: int = row) -> Sequence[Hit]:
            if k <= first_k:
                row_scores, row_ids = scores[row, :k], ids[row, :k]
                row_codes = None if codes is None else codes[row, :k]
            else:
                more_scores, more_ids = index.search(vectors[row : row + 1], k)
                row_scores, row_ids, row_codes = more_scores[0], more_ids[0], None
            if parents is None:
                return _hits(row_scores, row_ids, records)
            if row_codes is None:
                row_codes = parents.parent_codes(row_ids)
            return _hit_arrays(row_scores, row_ids, row_codes, parents, records)

        matches = ranker.rank(fetch, top_k, available=available)
        if verifier is not None and load_features is not None:
            matches = verifier.verify(query, matches, load_features)
        if refiner is not None and load_parent is not None:
            verified = [m for m in matches if m.inliers is not None]  # exact boxes, ranked first: nothing to refine
            matches = verified + refiner.refine(query, [m for m in matches if m.inliers is None], load_parent)
        if min_score is not None:
            matches = [m for m in matches if m.score >= min_score]
        results.append(matches)
    return results

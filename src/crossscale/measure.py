"""The exact parents of a set of queries, from every stored vector: what :meth:`CrossScaleSearch.measure_search`
compares a search's parents with.

Every stored vector is scored against every query as re-scoring scores it (its cosine with the unit query, to
float32 rounding), and each parent is ranked by its best chunk: the order of the default ``"max"`` aggregator. The
vectors are read once per group of queries, a batch at a time, so memory stays bounded whatever the collection:
each group holds one best score per (query, parent), at most :data:`BEST_BYTES` of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from crossscale.protocols import ChunkParents

__all__ = ["BEST_BYTES", "exact_parents", "parent_recall"]

#: the most bytes of per-(query, parent) best scores held at once (float32): more queries go in groups, each
#: reading the stored vectors again
BEST_BYTES = 256 << 20

#: a source of all stored ``(ids, vectors)``, a batch at a time (:meth:`crossscale.index.RootStore.iter_vectors`),
#: called once per group of queries
StoredVectors = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def exact_parents(
    queries: np.ndarray, top_k: int, stored: StoredVectors, parents: ChunkParents, *, parent_count: int
) -> np.ndarray:
    """Each query's ``top_k`` parents by their best chunk, as parent codes of ``parents``: ``(n, top_k)``, best
    first, ``-1`` past the parents there are. ``queries``: unit float32 rows of the stored vectors' dimension.
    ``parent_count``: about how many parents there are (sizes the groups of queries). Equal best scores are
    ordered by code (where they straddle the ``top_k``-th, which are kept is unspecified)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out = np.full((len(q), top_k), -1, dtype=np.int64)
    group = max(1, BEST_BYTES // (4 * max(1, parent_count)))
    for start in range(0, len(q), group):
        best = _best_per_parent(q[start : start + group], stored(), parents, parent_count)
        out[start : start + group] = _top(best, top_k)
    return out


def _best_per_parent(
    q: np.ndarray, stored: Iterable[tuple[np.ndarray, np.ndarray]], parents: ChunkParents, codes_hint: int
) -> np.ndarray:
    """``(len(q), codes)``: each query's best cosine with each parent's stored vectors, ``-inf`` for a parent with
    none (or a code no parent has). ``codes_hint``: the columns to start with (more are added as codes need)."""
    best = np.full((len(q), max(0, codes_hint)), -np.inf, dtype=np.float32)
    for ids, vectors in stored:
        codes = parents.parent_codes(np.asarray(ids, dtype=np.int64))
        rows = np.asarray(vectors, dtype=np.float32)
        keep = codes >= 0  # a vector whose parent is no longer mapped (deleted meanwhile) ranks nothing
        if not keep.all():
            rows, codes = rows[keep], codes[keep]
        if not len(codes):
            continue
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        scores = q @ rows.T
        scores /= np.where(norms > 0, norms, np.float32(1))
        if bool((codes[1:] < codes[:-1]).any()):  # a store assigns each parent one run of ids: rarely taken
            order = np.argsort(codes, kind="stable")
            codes, scores = codes[order], scores[:, order]
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        found = codes[starts]
        if int(found[-1]) >= best.shape[1]:  # codes past the hint (a parent map with removed parents' codes)
            width = int(found[-1]) + 1 + best.shape[1] // 8
            best = np.hstack([best, np.full((len(q), width - best.shape[1]), -np.inf, dtype=np.float32)])
        best[:, found] = np.maximum(best[:, found], np.maximum.reduceat(scores, starts, axis=1))
    return best


def _top(best: np.ndarray, top_k: int) -> np.ndarray:
    """The ``top_k`` columns of each row of ``best`` with the highest finite values, best first (equal values by
    column; where equal values straddle the ``top_k``-th, which are kept is unspecified), ``-1`` past the finite
    ones."""
    n, width = best.shape
    out = np.full((n, top_k), -1, dtype=np.int64)
    k = min(top_k, width)
    if k == 0:
        return out
    cols = np.argpartition(-best, k - 1, axis=1)[:, :k] if k < width else np.tile(np.arange(width), (n, 1))
    values = np.take_along_axis(best, cols, axis=1)
    order = np.lexsort((cols, -values))  # by value, then by column, along each row
    cols, values = np.take_along_axis(cols, order, axis=1), np.take_along_axis(values, order, axis=1)
    out[:, :k] = np.where(np.isfinite(values), cols, -1)
    return out


def parent_recall(found: Sequence[Sequence[str]], exact: Sequence[Sequence[str]]) -> float:
    """The mean, over queries with at least one exact parent, of the share of its exact parents found; ``1.0``
    where no query has any (nothing to find)."""
    shares = [len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True) if e]
    return float(np.mean(shares)) if shares else 1.0

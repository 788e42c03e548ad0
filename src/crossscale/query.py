"""The query path: ``query vectors → chunk hits → parents → refined parents``, one pure function.

:func:`search_parents` is the only implementation of a search. The facade calls it with its workspace's index,
records and images; the quality benchmark calls it with an in-memory index and a dict of records, so what is
measured is what ships.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import deque
from collections.abc import Callable, Sequence, Set
from typing import NamedTuple, TypeGuard

import numpy as np
from PIL import Image

from crossscale._checks import optional_finite, positive_int
from crossscale._vectors import cosines, embed, l2_normalize, pair_cosines, row_norms
from crossscale.errors import CapabilityError, ConfigurationError
from crossscale.protocols import (
    BatchRanker,
    CandidateFinder,
    ChunkParents,
    DetailsLookup,
    Encoder,
    FeatureLoader,
    GroupedVectorIndex,
    ParentLoader,
    Ranker,
    RecordLookup,
    Refiner,
    VectorIndex,
    VectorLookup,
    Verifier,
)
from crossscale.types import Hit, HitArrays, ParentMatch, Query, SearchParams

__all__ = ["FetchDepth", "embed_queries", "parent_match", "search_parents", "voted_matches"]

#: an index's plain search as one query batch calls it: ``(vectors, k) -> (scores, ids)``
IndexSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


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
    scores: np.ndarray,
    ids: np.ndarray,
    codes: np.ndarray,
    parents: ChunkParents,
    records: RecordLookup,
    details: DetailsLookup | None,
) -> HitArrays:
    """Hits of one result row as arrays; padding (-1) and ids of no parent are left out."""
    keep = codes >= 0
    return HitArrays(scores[keep], ids[keep], codes[keep], parents.parent_id, records, details=details)


def _distinct_parents(ids: np.ndarray, codes: np.ndarray | None, records: RecordLookup) -> int:
    """How many distinct parents the chunk ids of one result row belong to (padding and unknown ids left out)."""
    if codes is not None:
        return int(_distinct_per_row(codes[None, :])[0])
    return len({record.parent_id for record in records(int(i) for i in ids if i >= 0).values()})


#: at most this many bytes of float32 vectors are read from the store in one lookup when re-scoring (16 MiB: a
#: lookup's Python objects and copies peak at ~2x this; at 10M regions a batch of 1,000 peaked ~95 MiB lower than
#: with 64 MiB, at the same speed, docs/benchmarks.md)
_READ_BYTES = 16 << 20


class _ExactScores:
    """The exact cosines of one batch's hits against their queries, from the stored vectors.

    Scores are kept per search made for a query (a :class:`_Fetched`): a look at its first ``k`` hits scores only
    the hits past those already scored, and a hit another of the query's searches scored is not read again, so each
    (query, chunk) is read once however often the ranker deepens it (with alike chunks a query's hits were read ~5
    times). The hits of all the queries looked at together are read at once, in lookups of at most
    :data:`_READ_BYTES`. With ``per_parent``, :meth:`for_ranking` reads and scores only each parent's first
    ``per_parent`` hits in a search (by the index's order; the searches must carry their hits' parent codes)."""

    def __init__(self, queries: np.ndarray, lookup: VectorLookup, per_parent: int | None = None) -> None:
        self._queries = queries
        self._lookup = lookup
        self._per_parent = per_parent
        self._done: dict[int, np.ndarray] = {}  # id of a search's _Fetched -> exact scores of its first hits
        self._scored: list[list[_Fetched]] = [[] for _ in range(len(queries))]  # per query: its searches scored

    def of_searches(
        self, rows: Sequence[int], views: Sequence[_Fetched], ids: np.ndarray, wanted: np.ndarray | None = None
    ) -> np.ndarray:
        """The exact scores of the first ``k`` hits of each search ``views[i]`` (made for query ``rows[i]``, with at
        least ``k`` hits; ``ids`` holds them, one row each, ``(len(rows), k)``), as an array of that shape; NaN for
        padding and for hits whose vector is no longer stored (deleted since), and for those not ``wanted`` (a bool
        array of that shape; ``None``: every hit). What is read is read by :meth:`_score_pairs`, all the searches'
        hits at once."""
        k = ids.shape[1]
        scores = np.full(ids.shape, np.nan, dtype=np.float32)
        unread = ids >= 0 if wanted is None else (ids >= 0) & wanted
        for i, (r, view) in enumerate(zip(rows, views, strict=True)):
            done = self._done.get(id(view))
            if done is None:  # a search not looked at yet: what the query's other searches scored is reused
                self._known(r, ids[i], scores[i], unread[i])
                self._scored[r].append(view)  # the search stays alive (in _Fetched lists) while its id is a key
                self._done[id(view)] = np.zeros(0, np.float32)
            else:  # its first hits are scored already
                scores[i, : len(done)] = done[:k]
                unread[i, : len(done)] = False
        if unread.any():
            owners = np.broadcast_to(np.asarray(rows, dtype=np.int64)[:, None], ids.shape)[unread]
            read = np.full(len(owners), np.nan, dtype=np.float32)  # NaN: no longer stored
            self._score_pairs(ids[unread], owners, read)
            scores[unread] = read
        for i, view in enumerate(views):
            done = self._done[id(view)]
            if len(done) < k:
                self._done[id(view)] = np.concatenate([done, scores[i, len(done) :]])
        return scores

    def for_ranking(
        self, rows: Sequence[int], views: Sequence[_Fetched], ids: np.ndarray, codes: np.ndarray | None
    ) -> np.ndarray:
        """The scores the ranker sees for the first hits of each search (``ids``, and their parent ``codes``, one
        row each, as :func:`_as_searched` stacked them): :meth:`of_searches`' exact ones.

        With ``per_parent``, only each parent's first ``per_parent`` hits in a search are scored (hits of no
        parent: none); the others keep the index's score, capped at the lowest exact score of their parent's
        scored hits, so that a parent's best hit is always one scored exactly while its other hits still count (a
        box fused from its near-best chunks, a sum): NaN where none of its parent's scored hits is stored. A hit's
        place among its parent's hits depends on those before it only, so a deeper look agrees with a shallower
        one. Its searches must carry their hits' parent codes (``search_parents`` checks there is a parent map)."""
        if self._per_parent is None:
            return self.of_searches(rows, views, ids)
        if codes is None:
            raise ConfigurationError("re-scoring per parent needs the hits' parent codes (a parent map)")
        runs = _ParentRuns(codes)
        wanted = (codes >= 0) & (runs.places() < self._per_parent)
        scored = self.of_searches(rows, views, ids, wanted)
        rest = (ids >= 0) & (codes >= 0) & ~wanted
        if not rest.any():
            return scored
        cap = runs.floor(np.where(wanted, scored, np.nan))
        index_scores = _first_hits(views, ids.shape[1]).scores.astype(np.float32)
        out = scored.copy()
        out[rest] = np.minimum(index_scores[rest], cap[rest])  # NaN where the cap is
        return out

    def _known(self, row: int, ids: np.ndarray, scores: np.ndarray, unread: np.ndarray) -> None:
        """For the first hits ``ids`` of a new search of query ``row``: set in ``scores`` those its other searches
        scored, and clear them in ``unread`` (both rows of :meth:`of_searches`' arrays, changed in place). A search
        whose first hits are those of the query's last one (an index whose shallower searches are prefixes of
        deeper ones) takes its scores as they are. With ``per_parent``, a hit another search left unscored (NaN)
        may be wanted here: it stays unread (and one no longer stored is asked for again)."""
        others = self._scored[row]
        if not others or not unread.any():
            return
        last = others[-1]
        done = self._done[id(last)]
        if len(done) <= len(ids) and np.array_equal(ids[: len(done)], last.ids[: len(done)]):
            scores[: len(done)] = done
            unread[: len(done)] = False
            return
        known_ids = np.concatenate([o.ids[: len(self._done[id(o)])] for o in others])
        known = np.concatenate([self._done[id(o)] for o in others])
        order = np.argsort(known_ids, kind="stable")
        known_ids, known = known_ids[order], known[order]
        at = np.searchsorted(known_ids, ids).clip(max=len(known_ids) - 1)
        seen = unread & (known_ids[at] == ids)
        if self._per_parent is not None:
            seen &= ~np.isnan(known[at])
        scores[seen] = known[at[seen]]
        unread[seen] = False

    def _score_pairs(self, chunk_ids: np.ndarray, owners: np.ndarray, out: np.ndarray) -> None:
        """Set ``out[p]`` to the exact score of chunk ``chunk_ids[p]`` against query row ``owners[p]``, for every
        pair ``p`` whose chunk is stored (others are left as they are): the distinct chunks are looked up in
        increasing id order, at most :data:`_READ_BYTES` of float32 vectors at a time, and each pair is scored by
        :func:`~crossscale._vectors.pair_cosines`.

        A batch's searches are scored together, so each chunk is read once however many of its queries hit it. At
        10M regions a batch of 10,000 queries hit 1.1M distinct chunks 1.6M times at one depth; read once each and
        in id order, where each lookup's ids are close in a store's B-tree, they took half the time of reading the
        hits as they came (docs/benchmarks.md, "Re-scoring reads in id order")."""
        order = np.argsort(chunk_ids)  # the pairs by chunk (in any order among the pairs of one chunk)
        ordered = chunk_ids[order]
        first = np.ones(len(ordered), dtype=bool)  # where a chunk's pairs start
        first[1:] = ordered[1:] != ordered[:-1]
        distinct = ordered[first]
        which = np.cumsum(first) - 1  # each ordered pair's chunk, as an index into distinct
        block = max(1, _READ_BYTES // (4 * max(1, self._queries.shape[1])))
        for start in range(0, len(distinct), block):
            lo, hi = np.searchsorted(which, [start, start + block])  # the pairs of this block's chunks
            found, norms, row_of = self._looked_up(distinct[start : start + block])
            at = row_of[which[lo:hi] - start]
            stored = at >= 0
            pairs, at = order[lo:hi][stored], at[stored]
            for s in range(0, len(pairs), block):  # gathered (pairs, dim) operands no bigger than the lookup
                part = slice(s, s + block)
                out[pairs[part]] = pair_cosines(found[at[part]], norms[at[part]], self._queries[owners[pairs[part]]])

    def _looked_up(self, asked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stored vectors of the distinct chunk ids ``asked``, their :func:`row_norms`, and for each id asked
        its row in them (``-1``: not stored). A lookup may return fewer ids (those gone) or another order (a
        plugged-in one): each id then finds its row by its value."""
        found_ids, found = self._lookup(asked)
        found_ids = np.asarray(found_ids, dtype=np.int64).reshape(-1)
        if not len(found_ids):
            return np.zeros((0, self._queries.shape[1]), np.float32), np.zeros(0, np.float32), np.full(len(asked), -1)
        found = np.asarray(found, dtype=np.float32)
        norms = row_norms(found)
        if np.array_equal(found_ids, asked):
            return found, norms, np.arange(len(asked))
        by_id = np.argsort(found_ids, kind="stable")
        at = np.searchsorted(found_ids, asked, sorter=by_id).clip(max=len(found_ids) - 1)
        rows = by_id[at]
        return found, norms, np.where(found_ids[rows] == asked, rows, -1)


def parent_match(
    vector: np.ndarray,
    chunk_ids: Sequence[int],
    *,
    vectors: VectorLookup,
    records: RecordLookup,
    ranker: Ranker,
) -> ParentMatch | None:
    """What ``ranker`` makes of one parent for a query ``vector``, from all of the parent's chunks
    scored exactly against their stored vectors: the match a search would have given it had its chunks been among
    the hits. ``None`` if none of its chunks is stored any more (deleted since).

    For parents found by another route than the vector search (``search_parents(candidates=)``).
    """
    ids, rows = vectors(np.asarray(chunk_ids, dtype=np.int64).reshape(-1))
    if not len(ids):
        return None
    unit = l2_normalize(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
    scores = cosines(rows, row_norms(rows), unit)
    best = np.argsort(-scores, kind="stable")
    hits = _hits(scores[best], np.asarray(ids)[best], records)
    if not hits:
        return None
    found = ranker.rank(lambda k: hits[:k], 1, available=len(hits))
    return found[0] if found else None


def voted_matches(
    query: Query,
    votes: Sequence[tuple[str, int]],
    ranked: Set[str],
    *,
    chunk_ids: Callable[[str], Sequence[int] | None],
    vectors: VectorLookup,
    records: RecordLookup,
    ranker: Ranker,
    top_n: int = 5,
    min_votes: int = 3,
) -> list[ParentMatch]:
    """Matches for the ``top_n`` best-voted parents (``votes``: ``(parent_id, votes)``, most first, as
    :meth:`~crossscale.index.KeypointIndex.vote` gives them) with at least ``min_votes`` that are not in ``ranked``,
    each as :func:`parent_match` makes it; ``chunk_ids(parent_id)`` gives a parent's chunk ids (``None``: gone)."""
    picked = [pid for pid, n in votes if n >= min_votes and pid not in ranked][:top_n]
    found: list[ParentMatch] = []
    for pid in picked:
        ids = chunk_ids(pid)
        if ids is None:
            continue
        match = parent_match(query.vector, ids, vectors=vectors, records=records, ranker=ranker)
        if match is not None:
            found.append(match)
    return found


def _with_candidates(
    query: Query,
    matches: list[ParentMatch],
    top_k: int,
    candidates: CandidateFinder,
    verifier: Verifier,
    load_features: FeatureLoader,
) -> list[ParentMatch]:
    """``matches`` (already verified) with the candidates the verifier confirms, best first, at most ``top_k``:
    a candidate only enters when verified, so the rest of the ranking is the vector search's."""
    found = candidates(query, frozenset(m.parent_id for m in matches))
    if not found:
        return matches
    confirmed = [m for m in verifier.verify(query, found, load_features) if m.inliers is not None]
    if not confirmed:
        return matches
    return sorted(matches + confirmed, key=lambda m: (-m.score, m.parent_id))[:top_k]


class _ParentRuns:
    """The hits of a 2-D array of parent codes (one row per search, best hit first) grouped by (row, parent), each
    group's hits in their row's order: one sort for the questions asked of the groups."""

    def __init__(self, codes: np.ndarray) -> None:
        rows, width = codes.shape
        stride = int(codes.max(initial=0)) + 2  # codes run from -1 (none) up
        group = (codes.astype(np.int64) + 1) + stride * np.arange(rows, dtype=np.int64)[:, None]
        keys = (group * width + np.arange(width)).ravel()  # distinct: a plain sort keeps each row's order
        self._shape = codes.shape
        self._order = np.argsort(keys)
        grouped = group.ravel()[self._order]
        self._starts = np.ones(len(grouped), dtype=bool)
        self._starts[1:] = grouped[1:] != grouped[:-1]

    def places(self) -> np.ndarray:
        """For each hit, how many hits of its parent come before it in its row (``0``: the parent's first)."""
        at = np.arange(len(self._order))
        first = np.maximum.accumulate(np.where(self._starts, at, 0))  # where each hit's group starts
        places = np.empty(len(self._order), dtype=np.int64)
        places[self._order] = at - first
        return places.reshape(self._shape)

    def floor(self, values: np.ndarray) -> np.ndarray:
        """For each hit, the lowest of ``values`` (one per hit) over its parent's hits in its row, NaN ones left out
        (NaN where all are)."""
        flat = values.ravel()[self._order]
        floors = np.fmin.reduceat(flat, np.flatnonzero(self._starts)) if len(flat) else flat
        out = np.empty(len(self._order), dtype=values.dtype)
        out[self._order] = floors[np.cumsum(self._starts) - 1]
        return out.reshape(self._shape)


def _best_first(
    exact: np.ndarray, ids: np.ndarray, codes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Each row's hits ``ids`` (and their parent ``codes``, if given) with their exact scores, best first, equal
    scores by lower chunk id (as :class:`~crossscale.index.ChunkIndex` orders its own); hits scored NaN (padding,
    or no vector stored) become padding at the end: score ``-inf``, id ``-1``, code ``-1``. Arrays of ``exact``'s
    2-D shape (codes ``None`` where none were given)."""
    missing = np.isnan(exact)
    order = np.lexsort((ids, np.where(missing, np.inf, -exact)), axis=1)
    gone = np.take_along_axis(missing, order, axis=1)
    scores = np.where(gone, -np.inf, np.take_along_axis(exact, order, axis=1)).astype(np.float32)
    moved = None if codes is None else np.where(gone, -1, np.take_along_axis(codes, order, axis=1))
    return scores, np.where(gone, -1, np.take_along_axis(ids, order, axis=1)), moved


class _Searched(NamedTuple):
    """One index search of several queries: ``(scores, ids)`` and their parent codes (``None``: no parent map),
    one row per query."""

    scores: np.ndarray
    ids: np.ndarray
    codes: np.ndarray | None


class _Fetched(NamedTuple):
    """One search's hits for one query, best first: as the index gave them (``raw``: not yet re-scored against
    the exact vectors; a grouped search's hits never are), with their parent codes where a parent map is given.
    ``batch``: the search of several queries these are row ``row`` of (views of its arrays), if any."""

    scores: np.ndarray
    ids: np.ndarray
    codes: np.ndarray | None
    raw: bool
    batch: _Searched | None = None
    row: int = -1

    @classmethod
    def rows_of(cls, batch: _Searched, raw: bool) -> list[_Fetched]:
        """Each query's hits in ``batch``, one view per row."""
        codes = batch.codes
        return [
            cls(batch.scores[r], batch.ids[r], None if codes is None else codes[r], raw, batch, r)
            for r in range(len(batch.ids))
        ]


def _read_only(view: np.ndarray) -> np.ndarray:
    """``view`` (a view of a search's arrays, which later rankings read again) made read-only."""
    view.flags.writeable = False
    return view


def _first_hits(views: Sequence[_Fetched], k: int) -> _Searched:
    """The first ``k`` hits of each search ``views[i]`` (each holds at least ``k``), one row each: slices of the
    arrays of the one search they are consecutive rows of, where they are (the first ranking of a batch: no copy of
    its hits, 25 MiB for 10,000 queries of 160 hits), else stacked."""
    batch, start = views[0].batch, views[0].row
    if batch is not None and all(v.batch is batch and v.row == start + j for j, v in enumerate(views)):
        span = slice(start, start + len(views))
        codes = None if batch.codes is None else _read_only(batch.codes[span, :k])
        return _Searched(_read_only(batch.scores[span, :k]), _read_only(batch.ids[span, :k]), codes)
    coded = all(view.codes is not None for view in views)
    return _Searched(
        np.stack([view.scores[:k] for view in views]),
        np.stack([view.ids[:k] for view in views]),
        np.stack([view.codes[:k] for view in views]) if coded else None,  # type: ignore[index]
    )


class _FirstFetch(NamedTuple):
    """What :func:`_first_fetch` found: per query, the result of each search made for it, shallowest first;
    whether the batch's first search was a plain one whose hits' parents are known (not a grouped one, and with a
    parent map); and, when asked to learn (with a parent map), how deep some queries' first search would have had
    to be to need no other: where its ``top_k``-th parent first appears, or where the index ran out of hits for it
    (``0`` for the queries not sampled)."""

    fetched: list[list[_Fetched]]
    plain: bool
    reached: np.ndarray | None


class FetchDepth:
    """How deep the first index search of a query goes, learned from the queries searched before it.

    When a parent's chunks are alike (overlapping tiles of one photo), a query's best ``top_k * overfetch`` chunks
    hold fewer than ``top_k`` parents, and the query path searches again, twice as deep each round: up to five
    searches where one deep enough would do (an index search costs about the same at any depth; the scan
    dominates). A ``FetchDepth`` remembers how deep the last ``window`` queries had to go and makes the first
    search as deep as a ``quantile`` of them needed (a power-of-two multiple of ``top_k * overfetch``, at most
    ``max_factor``). The facade keeps one per :class:`~crossscale.CrossScaleSearch`.

    **Results do not depend on it**: the ranker is given the first ``top_k * overfetch`` hits of the deeper search,
    and then its prefixes, exactly as if it had searched that deep itself (re-scoring against exact vectors is
    applied to each prefix, not to the deeper result). That holds for an index whose ``search(q, k)`` is the first
    ``k`` hits of ``search(q, K)`` for any ``K > k`` (Flat, SQ, PQ and IVF scans on the CPU:
    :attr:`ChunkIndex.prefix_stable <crossscale.index.ChunkIndex.prefix_stable>`); the facade uses a
    ``FetchDepth`` only with those. Only the time a search takes depends on the queries before it, with one
    exception in the last bit: a batch that :class:`~crossscale.index.ChunkIndex` scans list by list scores its
    hits by matrix products whose float32 rounding depends on the batch's shape, so a hit found by a search of
    another depth, in a batch of other queries, may score one rounding step apart (seen on a small IVF-Flat
    workspace: 5 of 10 queries' scores ~6e-8 apart, the same parents and boxes). It learns from a few queries of
    each search (8), and is safe to share between threads.

    Args:
        window: how many recent queries it remembers (>= 1).
        quantile: the share of them whose first search should need no second one, in ``(0, 1]``.
        max_factor: the deepest first search, as a multiple of ``top_k * overfetch`` (>= 1).

    Raises:
        ConfigurationError: a bad argument.
    """

    def __init__(self, window: int = 256, quantile: float = 0.9, max_factor: int = 32) -> None:
        self.window = positive_int("window", window)
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile <= 1:
            raise ConfigurationError(f"quantile must be a number in (0, 1], got {quantile!r}")
        self.quantile = float(quantile)
        self.max_factor = positive_int("max_factor", max_factor)
        self._rounds: deque[int] = deque()  # per query remembered: the doublings its first search needed
        self._counts = [0] * 64  # how many remembered queries needed each number of doublings
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FetchDepth(window={self.window}, quantile={self.quantile}, max_factor={self.max_factor})"

    @property
    def factor(self) -> int:
        """The first search's depth now, as a multiple of ``top_k * overfetch`` (1 until a query needed more)."""
        with self._lock:
            wanted, seen = self.quantile * len(self._rounds), 0
            for rounds, count in enumerate(self._counts):
                seen += count
                if count and seen >= wanted:
                    return min(self.max_factor, 1 << rounds)
        return 1

    def record(self, needed: np.ndarray | Sequence[int], first: int) -> None:
        """Remember that queries needed first searches of ``needed`` hits each (``0``: unknown, not recorded) when
        ``first`` is ``top_k * overfetch``."""
        hits = np.asarray(needed, dtype=np.int64).reshape(-1)
        hits = hits[hits > 0]
        if not len(hits) or first < 1:
            return
        doublings = np.ceil(np.log2(np.maximum(hits, first) / first)).astype(np.int64).clip(0, 63).tolist()
        with self._lock:
            for rounds in doublings[-self.window :]:
                if len(self._rounds) == self.window:
                    self._counts[self._rounds.popleft()] -= 1
                self._rounds.append(rounds)
                self._counts[rounds] += 1

    def reset(self) -> None:
        """Forget what it learned (the next first search is ``top_k * overfetch`` deep again)."""
        with self._lock:
            self._rounds.clear()
            self._counts = [0] * 64


#: queries per search whose needed depth :func:`_first_fetch` works out for a :class:`FetchDepth` (it remembers 256)
_LEARN_ROWS = 8


def _first_depth(top_k: int, ranker: Ranker, available: int) -> int:
    """How many hits the ranker looks at first for each query: ``top_k * overfetch``, at least one, at most
    ``available``."""
    return max(1, min(available, top_k * ranker.overfetch))


def _first_fetch(
    vectors: np.ndarray,
    top_k: int,
    *,
    index: VectorIndex,
    search: IndexSearch,
    ranker: Ranker,
    parents: ChunkParents | None,
    records: RecordLookup,
    depth: int = 1,
    learn: bool = False,
) -> _FirstFetch:
    """The hits each query's ranking starts from, searched for the whole batch at once.

    A grouped search when the index and the ranker allow it, else ``top_k * overfetch * depth`` chunks per query
    (``depth``: :attr:`FetchDepth.factor`). Then, with a parent map, the queries whose hits hold fewer than
    ``top_k`` parents (a parent's chunks are alike) are searched again together, twice as deep each round, so that
    the ranker seldom asks for more one query at a time: one batched search per doubling instead of one per query.
    Hits are kept as the index gave them (not re-scored). ``search``: ``index``'s plain search, as this batch
    calls it (:func:`_searching`). ``learn``: also work out how deep the first search of a few of the queries had
    to be (for :meth:`FetchDepth.record`).
    """
    n, available = len(vectors), len(index)
    if available <= 0:
        return _FirstFetch([[] for _ in range(n)], False, None)  # nothing to search (the ranker asks for nothing)
    k = _first_depth(top_k, ranker, available)
    group_size = getattr(ranker, "group_size", None)
    grouped = False
    if _is_grouped(index) and isinstance(group_size, int) and group_size > 0:
        scores, ids = index.search_grouped(vectors, top_k, group_size)
        grouped = True
    else:
        scores, ids = search(vectors, max(k, min(available, k * depth)))
    codes = None if parents is None else parents.parent_codes(ids)
    fetched = [[view] for view in _Fetched.rows_of(_Searched(scores, ids, codes), not grouped)]
    plain = not grouped and codes is not None
    reached = np.zeros(n, dtype=np.int64) if learn and not grouped and codes is not None else None  # needs_more

    def search_again(rows: list[int], depth: int, *, replace: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        more_scores, more_ids = search(vectors[rows], depth)
        more_codes = None if parents is None else parents.parent_codes(more_ids)
        for r, view in zip(rows, _Fetched.rows_of(_Searched(more_scores, more_ids, more_codes), True), strict=True):
            fetched[r] = [view] if replace else [*fetched[r], view]
        return more_ids, more_codes

    last_rows, last_ids, last_codes = list(range(n)), ids, codes  # the rows of the last plain search, its result
    if grouped:  # a grouped search may return fewer parents than asked although more exist (Milvus Lite does)
        last_rows = [r for r in range(n) if _distinct_parents(fetched[r][0].ids, fetched[r][0].codes, records) < top_k]
        if last_rows:
            last_ids, last_codes = search_again(last_rows, k, replace=True)
    if last_codes is None or not last_rows:
        return _FirstFetch(fetched, plain, reached)  # counting parents would read every hit's record: the ranker asks

    def needs_more(rows: list[int], ids: np.ndarray, codes: np.ndarray) -> list[int]:
        """The rows (of one search) that got all they asked for, yet fewer than ``top_k`` parents; for the rows
        sampled (the batch's first :data:`_LEARN_ROWS`), records how deep a first search would have had to be to
        need no other."""
        full = (ids >= 0).all(axis=1)  # fewer hits than asked: the index has no more
        if reached is not None:  # the sampled rows only, each followed to its end; the rows searched again are the
            # batch's deepest, and recording them too (before) made a batch's first search twice as deep as needed
            picked = [j for j, r in enumerate(rows) if r < _LEARN_ROWS]
            if picked:
                need = _reach_depth(codes[picked], top_k)
                valid = (ids[picked] >= 0).sum(axis=1)  # too few parents: one hit past what the index has shows it
                at = [rows[j] for j in picked]
                reached[at] = np.where(need > 0, need, np.minimum(valid + 1, available))
        return [r for r, more in zip(rows, full & (_distinct_per_row(codes) < top_k), strict=True) if more]

    k = len(last_ids[0]) if len(last_ids) else k
    short = needs_more(last_rows, last_ids, last_codes)
    while short and k < available:
        k = min(available, 2 * k)
        more_ids, more_codes = search_again(short, k)
        short = [] if more_codes is None else needs_more(short, more_ids, more_codes)
    return _FirstFetch(fetched, plain, reached)


def _searching(index: VectorIndex, params: SearchParams | None) -> IndexSearch:
    """``index.search``, given ``params`` at each call where there are any.

    Raises:
        ConfigurationError: ``params`` is not a :class:`~crossscale.types.SearchParams`.
        CapabilityError: ``params`` for an index whose ``search`` takes none (a plugged-in index without them).
    """
    if SearchParams.checked(params) is None:
        return index.search
    try:
        takes = "params" in inspect.signature(index.search).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        takes = False
    if not takes:
        raise CapabilityError(
            f"the chunk index {type(index).__name__} does not take per-call search parameters (its search() has no "
            "params= argument); search without params, or use a crossscale.index.ChunkIndex"
        )
    tuned: Callable[..., tuple[np.ndarray, np.ndarray]] = index.search  # its signature takes params (checked)
    return functools.partial(tuned, params=params)


def _ranks_batches(ranker: Ranker) -> TypeGuard[BatchRanker]:
    """Whether ``ranker`` is a :class:`~crossscale.protocols.BatchRanker` (without a protocol ``isinstance``)."""
    return callable(getattr(ranker, "rank_batch", None))


def _is_grouped(index: VectorIndex) -> TypeGuard[GroupedVectorIndex]:
    """Whether ``index`` is a :class:`~crossscale.protocols.GroupedVectorIndex` (a protocol ``isinstance`` checks
    every member, ~20 µs: a search asks this per call)."""
    return callable(getattr(index, "search_grouped", None))


def _distinct_per_row(codes: np.ndarray) -> np.ndarray:
    """How many distinct parent codes (``>= 0``) each row of a 2-D array holds."""
    ordered = np.sort(codes, axis=1)
    new = np.ones(ordered.shape, dtype=bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    counts: np.ndarray = (new & (ordered >= 0)).sum(axis=1)
    return counts


def _reach_depth(codes: np.ndarray, top_k: int) -> np.ndarray:
    """Per row of parent codes (best hit first, ``-1`` for none), how many of its first hits hold ``top_k``
    distinct parents: one past where the ``top_k``-th parent first appears; ``0`` where the row holds fewer."""
    n, width = codes.shape
    if width < top_k:
        return np.zeros(n, dtype=np.int64)
    order = np.argsort(codes, axis=1, kind="stable")  # each parent's hits together, its best (first) one first
    ordered = np.take_along_axis(codes, order, axis=1)
    later = np.empty(ordered.shape, dtype=bool)  # not where a parent first appears (or padding)
    later[:, 0] = ordered[:, 0] < 0
    np.logical_or(ordered[:, 1:] == ordered[:, :-1], ordered[:, 1:] < 0, out=later[:, 1:])
    firsts = np.where(later, width, order)  # the positions where parents first appear; width elsewhere
    at = np.partition(firsts, top_k - 1, axis=1)[:, top_k - 1]
    need: np.ndarray = np.where(at < width, at + 1, 0).astype(np.int64)
    return need


def _shallowest(views: Sequence[_Fetched], k: int) -> _Fetched | None:
    """The shallowest of a query's searches that holds ``k`` hits (``None``: none does). Its first ``k`` hits are
    what a search of ``k`` gives (ties stay in its order), whereas a deeper search's could differ."""
    deep_enough = [view for view in views if len(view.ids) >= k]
    return min(deep_enough, key=lambda view: len(view.ids)) if deep_enough else None


def _as_searched(
    rows: Sequence[int], views: Sequence[_Fetched], k: int, exact: _ExactScores | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The first ``k`` hits of each search ``views[i]`` (made for query ``rows[i]``, with at least ``k`` hits) as the
    ranker sees a search of ``k``: ``(scores, ids, parent codes)``, one row each. Raw hits are re-scored exactly and
    re-sorted when ``exact`` is given (as a search of ``k`` would be, not the deeper one), those no longer stored
    made padding; the codes are the searches' own (re-sorted with their hits), ``None`` where a search has none
    (to be looked up). The searches are all raw (plain ones) or all not (grouped)."""
    scores, ids, codes = _first_hits(views, k)
    if exact is not None and all(view.raw for view in views):
        return _best_first(exact.for_ranking(rows, views, ids, codes), ids, codes)
    return scores, ids, codes


def _rank_together(
    fetched: list[list[_Fetched]],
    top_k: int,
    *,
    ranker: BatchRanker,
    available: int,
    parents: ChunkParents,
    details: DetailsLookup,
    records: RecordLookup,
    exact: _ExactScores | None,
) -> list[list[ParentMatch] | None]:
    """What ``ranker.rank`` returns for each query, folded for the whole batch at once: the first
    ``top_k * overfetch`` hits of every query in one ``rank_batch``, then twice as many of those it leaves, and so
    on, each depth cut from the query's searches as a search of that depth gives it. ``None`` for a query whose
    searches do not reach the depth it needs (ranked alone)."""
    out: list[list[ParentMatch] | None] = [None] * len(fetched)
    k = _first_depth(top_k, ranker, available)
    pending = list(range(len(fetched)))
    while pending:
        found = [(r, view) for r in pending if (view := _shallowest(fetched[r], k)) is not None]
        if not found:
            break
        rows = [r for r, _ in found]
        scores, ids, codes = _as_searched(rows, [view for _, view in found], k, exact)
        codes = parents.parent_codes(ids) if codes is None else codes
        got = ranker.rank_batch(
            scores,
            ids,
            codes,
            top_k,
            available=available,
            parent_id=parents.parent_id,
            details=details,
            records=records,
        )
        if len(got) != len(rows):
            raise ConfigurationError(
                f"ranker {type(ranker).__name__}.rank_batch returned {len(got)} rows for {len(rows)} queries"
            )
        pending = []
        for r, matches in zip(rows, got, strict=True):
            if matches is None:
                pending.append(r)
            else:
                out[r] = matches
        if k >= available:
            break
        k = min(available, 2 * k)
    return out


def _query_rows(queries: Sequence[Query], vectors: np.ndarray | None) -> np.ndarray:
    """The queries' vectors, one row each: ``vectors`` where given (checked for its shape and type), else stacked.

    Raises:
        ConfigurationError: ``vectors`` is not a 2-D float32 array of one row per query.
    """
    if vectors is None:
        return np.stack([np.asarray(q.vector, dtype=np.float32).reshape(-1) for q in queries])
    if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32 or vectors.shape[:1] != (len(queries),):
        shape = getattr(vectors, "shape", None)
        raise ConfigurationError(
            f"vectors must be a float32 array of one row per query ({len(queries)}), got "
            f"{type(vectors).__name__} of shape {shape} and dtype {getattr(vectors, 'dtype', None)}"
        )
    if vectors.ndim != 2:
        raise ConfigurationError(f"vectors must be 2-D (one row per query), got shape {vectors.shape}")
    return vectors


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
    exact_vectors: VectorLookup | None = None,
    refine_verified: bool = False,
    details: DetailsLookup | None = None,
    fetch_depth: FetchDepth | None = None,
    candidates: CandidateFinder | None = None,
    params: SearchParams | None = None,
    rescore_per_parent: int | None = None,
    vectors: np.ndarray | None = None,
) -> list[list[ParentMatch]]:
    """The ``top_k`` best parents of each query, best first.

    One index search serves the whole batch (``top_k * ranker.overfetch`` chunks per query). With ``parents``,
    the queries whose chunks hold too few distinct parents are searched again together, twice as deep each round;
    without it, the ranker asks for more one query at a time. Against a
    :class:`~crossscale.protocols.GroupedVectorIndex`, with a ranker that sets ``group_size``, the first search is a
    grouped one: the best ``group_size`` chunks of each of the ``top_k`` best distinct parents. The verifier, if
    any, then checks the parents geometrically against their stored local features (``load_features``); the
    refiner, if any, re-scores the parents the verifier did not confirm, reading them with ``load_parent``.
    ``min_score`` drops parents below it, last.

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
        exact_vectors: chunk ids → their exact stored vectors (:meth:`~crossscale.index.RootStore.vectors`). With
            it, every search's hits are scored again against them and re-sorted before ranking: for an index
            whose scores are approximate (projected vectors, SQ8 or PQ codes), so that candidates it found are
            ordered, and scored, by their true cosines. A batch folded together reads each depth's hits of all
            its queries at once: each distinct chunk once, in increasing id order, in lookups of at most 16 MiB of
            vectors; each (query, chunk) is scored once where the index is ``prefix_stable``.
        refine_verified: also refine the queries whose best match the verifier confirmed (their unverified matches,
            which rank below it whatever the refiner finds). ``False`` (default): the refiner runs only for queries
            with no verified match, so a settled query costs no extra encoder pass.
        details: chunk ids → their boxes, kinds and labels in bulk (a workspace's
            :meth:`~crossscale.index.ParentMap.details`); needs ``parents``. With it no record is read: a
            :class:`~crossscale.protocols.BatchRanker` folds the whole batch's first hits at once, then those twice
            as deep of the queries that need more, and so on, and builds the matches from the details (the result
            is the same as each query ranked alone), and any other ranker's :class:`~crossscale.types.HitArrays`
            carry them.
        fetch_depth: learns how deep the first search goes (:class:`FetchDepth`); needs ``parents``. Only for an
            index whose shallower searches are prefixes of deeper ones (``prefix_stable``): the result is then
            the same as without it.
        candidates: parents found by another route (e.g. a :class:`~crossscale.index.KeypointIndex`'s vote over the
            query's local features), given the parent ids the ranker returned; needs ``verifier``. Those the
            verifier confirms join the matches (ranked by their verified scores, at most ``top_k`` in all); the
            others are dropped, so the unverified ranking stays the vector search's. Found for the
            parents a vector search misses: a small object seen by a few of a region's cells.
        params: how hard the index looks in these searches only (:class:`~crossscale.types.SearchParams`: an IVF
            index's ``nprobe``...), given to every plain ``index.search`` of the call as ``params=``.
        rescore_per_parent: with ``exact_vectors``, score only each parent's first ``rescore_per_parent`` hits in a
            search (by the index's scores) against the stored vectors; its other hits keep the index's scores,
            capped at the lowest re-scored score of their parent, so that a parent's best hit is always one scored
            exactly (they still count in a fused box or a sum). Needs ``parents``. At 10M alike
            regions, 2 per parent read ~42 of a query's 160 hits and ranked the same parents as re-scoring all
            of them (docs/benchmarks.md, "Re-scoring each parent's best hits"). ``None``: every hit.
        vectors: the queries' vectors as one float32 array of ``len(queries)`` rows, row ``i`` query ``i``'s
            (e.g. the array the queries' vectors are rows of), searched as it is instead of a stacked copy of
            them (10 MiB for 10,000 queries of 256 dimensions); it is never written to. ``None``: stacked from the
            queries.

    Raises:
        ConfigurationError: a bad ``top_k``, ``min_score``, ``params`` or ``rescore_per_parent``, a refiner
            without ``load_parent``, ``rescore_per_parent`` without ``exact_vectors`` and ``parents``, or
            ``vectors`` that is not a 2-D float32 array of one row per query.
        CapabilityError: ``params`` for an index whose ``search`` takes none.
    """
    top_k = positive_int("top_k", top_k)
    min_score = optional_finite("min_score", min_score)
    if refiner is not None and load_parent is None:
        raise ConfigurationError("a refiner needs load_parent to read the parents it re-scores")
    if verifier is not None and load_features is None:
        raise ConfigurationError("a verifier needs load_features to read what it stored of the parents")
    if candidates is not None and verifier is None:
        raise ConfigurationError("candidates need a verifier: only the ones it confirms are kept")
    if rescore_per_parent is not None:
        rescore_per_parent = positive_int("rescore_per_parent", rescore_per_parent)
        if exact_vectors is None or parents is None:
            raise ConfigurationError(
                "rescore_per_parent needs exact_vectors (to re-score with) and parents (to know each hit's parent)"
            )
    search = _searching(index, params)
    if not queries:
        return []
    vectors = _query_rows(queries, vectors)
    available = len(index)
    depth = 1 if fetch_depth is None or parents is None else fetch_depth.factor
    fetched, plain, reached = _first_fetch(
        vectors,
        top_k,
        index=index,
        search=search,
        ranker=ranker,
        parents=parents,
        records=records,
        depth=depth,
        learn=fetch_depth is not None,
    )
    if fetch_depth is not None and reached is not None:
        fetch_depth.record(reached, _first_depth(top_k, ranker, available))
    exact = None if exact_vectors is None else _ExactScores(vectors, exact_vectors, rescore_per_parent)
    together: list[list[ParentMatch] | None] = [None] * len(queries)
    if plain and parents is not None and details is not None and _ranks_batches(ranker):
        together = _rank_together(
            fetched,
            top_k,
            ranker=ranker,
            available=available,
            parents=parents,
            details=details,
            records=records,
            exact=exact,
        )
    results: list[list[ParentMatch]] = []
    for row, query in enumerate(queries):

        def fetch(k: int, row: int = row) -> Sequence[Hit]:
            view = _shallowest(fetched[row], k)
            if view is None:
                more_scores, more_ids = search(vectors[row : row + 1], k)
                more_codes = None if parents is None else parents.parent_codes(more_ids)[0]
                view = _Fetched(more_scores[0], more_ids[0], more_codes, True)
                fetched[row].append(view)
            scores, ids, codes = _as_searched([row], [view], k, exact)
            if parents is None:
                return _hits(scores[0], ids[0], records)
            codes = parents.parent_codes(ids) if codes is None else codes
            return _hit_arrays(scores[0], ids[0], codes[0], parents, records, details)

        ranked = together[row]
        matches = ranker.rank(fetch, top_k, available=available) if ranked is None else ranked
        if verifier is not None and load_features is not None:
            matches = verifier.verify(query, matches, load_features)
            if candidates is not None:
                matches = _with_candidates(query, matches, top_k, candidates, verifier, load_features)
        if refiner is not None and load_parent is not None:
            verified = [m for m in matches if m.inliers is not None]  # exact boxes, ranked first: nothing to refine
            if refine_verified or not verified:
                matches = verified + refiner.refine(query, [m for m in matches if m.inliers is None], load_parent)
        if min_score is not None:
            matches = [m for m in matches if m.score >= min_score]
        results.append(matches)
    return results

"""Fold chunk hits into a ranked list of parent images (``hits → parents``)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from crossscale._checks import number_in, optional_finite, positive_int
from crossscale.errors import ConfigurationError
from crossscale.protocols import FetchHits
from crossscale.rank.aggregators import (
    Aggregator,
    GroupedAggregator,
    MaxAggregator,
    MeanTopNAggregator,
    SumAggregator,
    create_aggregator,
)
from crossscale.types import CHUNK_KINDS, Box, ChunkDetails, ChunkRecord, Hit, HitArrays, ParentMatch

logger = logging.getLogger(__name__)

__all__ = ["BOX_MODES", "ParentRanker"]

BOX_MODES = ("best", "fusion")
#: :meth:`ParentRanker.rank_batch` folds at most this many hits at once (the rows of a batch are independent).
#: The fold's temporaries are ~110 bytes a hit, so a batch of 10,000 queries 640 hits deep would otherwise hold
#: ~700 MB of them at once; and its sorts and gathers run several times faster on arrays that stay in the CPU's
#: cache (10,000 x 160 hits: 103-114 ms in blocks of 8-32k hits, 414 in blocks of 512k, 767 at once; AMD EPYC)
FOLD_HITS = 1 << 14


class ParentRanker:
    """Ranks parents by an aggregate of their chunks' scores.

    It asks ``fetch`` for ``top_k * overfetch`` chunks and, if those hold fewer
    than ``top_k`` distinct parents, asks again with twice as many, until it has
    ``top_k`` parents or has seen all ``available`` chunks. So it returns
    ``min(top_k, number of parents)`` parents for an exhaustive index.

    Args:
        aggregator: ``"max"`` (default), ``"sum"``, ``"mean_topN"`` or an :class:`Aggregator`.
        overfetch: chunks asked for per wanted parent on the first try (>= 1).
        min_score: parents whose score is below this are dropped.
        box: ``"fusion"`` (default): the match's box is the score-weighted mean of the near-best chunks'
            boxes (better localisation, measured); ``"best"``: the best chunk's box.
        box_margin: chunks within this much of the best score take part in the fusion.
    """

    def __init__(
        self,
        aggregator: str | Aggregator = "max",
        *,
        overfetch: int = 8,
        min_score: float | None = None,
        box: str = "fusion",
        box_margin: float = 0.05,
    ) -> None:
        if box not in BOX_MODES:
            raise ConfigurationError(f"box must be one of {BOX_MODES}, got {box!r}")
        self.box = box
        self.box_margin = number_in("box_margin", box_margin, 0.0, 2.0)
        self.aggregator = create_aggregator(aggregator)
        self._grouped = self.aggregator if isinstance(self.aggregator, GroupedAggregator) else None
        self.overfetch = positive_int("overfetch", overfetch)
        self.min_score = optional_finite("min_score", min_score)

    @property
    def group_size(self) -> int | None:
        """Chunks per parent for a grouped index search (Milvus): ``overfetch`` with ``"max"``, ``None`` otherwise.

        A parent's ``"max"`` score is its best chunk's, so the ``top_k`` parents a grouped search finds are
        exactly the ones this ranker would pick from a plain search; sums and means need the plain search.
        """
        return self.overfetch if isinstance(self.aggregator, MaxAggregator) else None

    def __repr__(self) -> str:
        return (
            f"ParentRanker(aggregator={self.aggregator.name!r}, overfetch={self.overfetch}, "
            f"min_score={self.min_score!r}, box={self.box!r}, box_margin={self.box_margin})"
        )

    def fold(self, hits: Sequence[Hit], top_k: int | None = None) -> list[ParentMatch]:
        """Group hits by parent, score each parent, and sort (score desc, then parent id).

        Pure: the same hits give the same list. ``top_k=None`` keeps all parents. :class:`HitArrays` are
        folded with numpy, reading records only for the parents returned (none with details); the result is the
        same.
        """
        if isinstance(hits, HitArrays):
            return self._matches_of_arrays(hits, self._fold_hits(hits), top_k)
        return self._matches(self._scored(hits), top_k)

    def _scored(self, hits: Sequence[Hit]) -> list[tuple[float, str, list[Hit]]]:
        """``(score, parent_id, hits best first)`` per parent passing ``min_score``, best parent first."""
        groups: dict[str, list[Hit]] = {}
        for hit in hits:
            groups.setdefault(hit.parent_id, []).append(hit)
        scored = []
        for parent_id, group in groups.items():
            group.sort(key=lambda h: (-h.score, h.chunk_id))
            score = self.aggregator(np.asarray([h.score for h in group], dtype=np.float64))
            if self.min_score is None or score >= self.min_score:
                scored.append((score, parent_id, group))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return scored

    def _matches(self, scored: list[tuple[float, str, list[Hit]]], top_k: int | None) -> list[ParentMatch]:
        """ParentMatches of the first ``top_k`` scored parents (boxes are computed only for those)."""
        return [
            self._match(score, parent_id, group, len(group))
            for score, parent_id, group in (scored if top_k is None else scored[:top_k])
        ]

    def _match(self, score: float, parent_id: str, group: list[Hit], n_hits: int) -> ParentMatch:
        best = group[0]
        return ParentMatch(
            parent_id=parent_id,
            score=score,
            box=self._box(group),
            kind=best.kind,
            label=best.label,
            chunk_score=best.score,
            chunk_id=best.chunk_id,
            n_hits=n_hits,
        )

    # ------------------------------------------------------------------ the numpy fold of HitArrays
    def _fold_rows(self, scores: np.ndarray, ids: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> _Folded:
        """Group the hits of one or more queries (``rows``) by query and parent, best first then lower id within
        a group, and score each group, as :meth:`_scored` does for one query's :class:`Hit` list."""
        order, strictly = _grouping_order(scores, ids, codes, rows)
        in_rows, in_codes = rows[order], codes[order]
        in_order = scores[order].astype(np.float64)  # widened after the gather: one float64 copy, not two
        new = np.ones(len(order), dtype=bool)
        new[1:] = (in_rows[1:] != in_rows[:-1]) | (in_codes[1:] != in_codes[:-1])
        starts = np.flatnonzero(new)
        sizes = np.diff(np.append(starts, len(order)))
        if len(starts) == 0:
            parent_scores = np.zeros(0, np.float64)
        elif self._grouped is not None:
            parent_scores = self._grouped.over_groups(in_order, starts)
        else:
            bounds = np.append(starts, len(order))
            parent_scores = np.array([self.aggregator(in_order[a:b]) for a, b in itertools.pairwise(bounds)])
        if self.box == "best" or len(starts) == 0:
            near = np.ones(len(starts), np.int64)
        else:  # within a group (best first) the hits near the best one are a prefix
            close = in_order >= np.repeat(in_order[starts], sizes) - self.box_margin
            near = np.add.reduceat(close.astype(np.int64), starts)
        passing = np.ones(len(starts), bool) if self.min_score is None else parent_scores >= self.min_score
        # a parent's max is its first hit: with hits in index order, parents rank in the order they first appear
        by_first = order[starts] if strictly and isinstance(self.aggregator, MaxAggregator) else None
        return _Folded(order, starts, sizes, near, parent_scores, in_rows[starts], in_codes[starts], passing, by_first)

    def _fold_hits(self, hits: HitArrays) -> _Folded:
        """:meth:`_fold_rows` of one query's :class:`HitArrays`."""
        return self._fold_rows(hits.scores, hits.chunk_ids, hits.parents, np.zeros(hits.fetched, np.int64))

    @staticmethod
    def _rankings(folded: _Folded, n_rows: int, parent_id: Callable[[int], str]) -> list[list[int]]:
        """Per query, its groups passing ``min_score``, best first; equal scores ordered by parent id."""
        candidates = np.flatnonzero(folded.passing)
        if folded.first_hits is not None:  # strictly decreasing scores: no ties either
            ranked = candidates[np.argsort(folded.first_hits[candidates])]
        else:
            by_score = candidates[np.argsort(-folded.parent_scores[candidates], kind="stable")]
            row_of = folded.group_rows[by_score]
            ranked = by_score[np.argsort(row_of.astype(np.uint16) if n_rows <= 1 << 16 else row_of, kind="stable")]
        ranked_rows = folded.group_rows[ranked]
        bounds = np.searchsorted(ranked_rows, np.arange(n_rows + 1)).tolist()
        out = [ranked[bounds[r] : bounds[r + 1]].tolist() for r in range(n_rows)]
        if folded.first_hits is None:
            ranked_scores = folded.parent_scores[ranked]
            tied = (ranked_scores[1:] == ranked_scores[:-1]) & (ranked_rows[1:] == ranked_rows[:-1])
            for r in np.unique(ranked_rows[1:][tied]).tolist():
                out[r].sort(key=lambda g: (-folded.parent_scores[g], parent_id(int(folded.group_codes[g]))))
        return out

    def _matches_of_details(
        self,
        folded: _Folded,
        groups: Sequence[int],
        scores: np.ndarray,
        ids: np.ndarray,
        parent_id: Callable[[int], str],
        details: Callable[[np.ndarray], ChunkDetails],
    ) -> list[ParentMatch] | None:
        """ParentMatches of ``groups`` built from the chunks' details, with no record read; ``None`` if the
        details of a chunk they need are not known (the caller then reads records)."""
        if not groups:
            return []
        g = np.asarray(groups, dtype=np.int64)
        counts = folded.near[g]
        first = np.zeros(len(g), np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        offsets = np.arange(int(counts.sum())) - np.repeat(first, counts)
        positions = folded.order[np.repeat(folded.starts[g], counts) + offsets]
        found = details(ids[positions])
        if not found.known.all():
            return None
        boxes = found.boxes
        final = boxes[first]
        several = counts > 1
        if self.box == "fusion" and several.any():
            best = np.repeat(final, counts, axis=0)
            overlap = (np.minimum(boxes[:, 2], best[:, 2]) > np.maximum(boxes[:, 0], best[:, 0])) & (
                np.minimum(boxes[:, 3], best[:, 3]) > np.maximum(boxes[:, 1], best[:, 1])
            )
            group_of = np.repeat(np.arange(len(g)), counts)[overlap]
            kept_starts = np.searchsorted(group_of, np.arange(len(g)))  # the best chunk overlaps itself: never empty
            kept = np.diff(np.append(kept_starts, len(group_of)))
            weights = np.maximum(scores[positions][overlap].astype(np.float64), 1e-6)
            fused = _fused(boxes[overlap], weights, kept_starts)
            final = np.where((kept > 1)[:, None], fused, final)
        best_positions = positions[first]
        vocabulary = (*found.vocabulary, None)  # label -1: none
        columns = zip(
            [parent_id(code) for code in folded.group_codes[g].tolist()],
            folded.parent_scores[g].tolist(),
            final.tolist(),
            [CHUNK_KINDS[k] for k in found.kinds[first].tolist()],
            scores[best_positions].tolist(),
            ids[best_positions].tolist(),
            folded.sizes[g].tolist(),
            [vocabulary[label] for label in found.labels[first].tolist()],
            strict=True,
        )
        return [
            ParentMatch._trusted(name, score, Box._trusted(*box), kind, chunk_score, chunk_id, n_hits, label)  # type: ignore[arg-type]
            for name, score, box, kind, chunk_score, chunk_id, n_hits, label in columns
        ]

    def _matches_of_arrays(self, hits: HitArrays, folded: _Folded, top_k: int | None) -> list[ParentMatch]:
        """ParentMatches of the first ``top_k`` ranked parents: from the chunks' details when ``hits`` has them,
        else reading the records of their near-best chunks only.

        A parent whose best chunk's record is gone (deleted since the index was loaded) is skipped for the next.
        """
        ranking = self._rankings(folded, 1, hits.parent_id)[0]
        want = len(ranking) if top_k is None else top_k
        if hits.details is not None:
            built = self._matches_of_details(
                folded, ranking[:want], hits.scores, hits.chunk_ids, hits.parent_id, hits.details
            )
            if built is not None:
                return built
        order = folded.order.tolist()
        starts, near, sizes = folded.starts.tolist(), folded.near.tolist(), folded.sizes.tolist()
        matches: list[ParentMatch] = []
        done = 0
        while done < len(ranking) and len(matches) < want:
            take = ranking[done : done + want - len(matches)]
            done += len(take)
            spans = [(starts[g], starts[g] + near[g]) for g in take]
            found = hits.hits_at([p for a, b in spans for p in order[a:b]])
            for g, (a, b) in zip(take, spans, strict=True):
                if order[a] not in found:
                    continue
                group = [found[p] for p in order[a:b] if p in found]
                matches.append(self._match(float(folded.parent_scores[g]), group[0].parent_id, group, sizes[g]))
        return matches

    def _box(self, group: list[Hit]) -> Box:
        """Where the query is in the parent: the best chunk's box, or a fusion of the near-best chunks.

        ``fusion``: the score-weighted mean box of the chunks scoring within ``box_margin`` of the best
        that overlap it. It localises better than the best chunk alone, and better than the intersection of
        those chunks (docs/benchmarks.md).
        """
        best = group[0]
        best_box = best.box
        if self.box == "best":
            return best_box
        floor = best.score - self.box_margin
        near = [h for h in group if h.score >= floor and h.box.intersection_area(best_box) > 0]
        if len(near) == 1:  # the best chunk alone (it is always near itself): its box
            return best_box
        boxes = np.array([h.box.as_tuple() for h in near], dtype=np.int64)
        weights = np.maximum(np.array([h.score for h in near], dtype=np.float64), 1e-6)
        return Box._trusted(*_fused(boxes, weights, np.zeros(1, np.int64))[0].tolist())

    def rank_batch(
        self,
        scores: np.ndarray,
        chunk_ids: np.ndarray,
        parents: np.ndarray,
        top_k: int,
        *,
        available: int,
        parent_id: Callable[[int], str],
        details: Callable[[np.ndarray], ChunkDetails],
        records: Callable[[Iterable[int]], Mapping[int, ChunkRecord]],
    ) -> list[list[ParentMatch] | None]:
        """:meth:`rank` for many queries at once, from their first ``k`` hits each, folded together with numpy.

        Row ``r`` of the arrays holds query ``r``'s first ``k`` hits, best first (``parents`` codes them, ``-1``
        for padding or an id of no parent), where ``k`` is a depth :meth:`rank` asks for: ``top_k * overfetch``,
        doubled any number of times, at most ``available``. A query that these hits settle gets exactly what
        :meth:`rank` returns for it; one for which :meth:`rank` would ask for more hits gets ``None``. Matches are
        built from the chunks' ``details``; ``records`` are read only for a query whose details are unknown. The
        rows are folded a block at a time (:data:`FOLD_HITS` hits), which bounds the fold's memory whatever the
        batch and keeps its arrays in the CPU's cache; the result does not depend on it.

        Raises:
            ConfigurationError: a bad ``top_k``, arrays of different shapes, or a width :meth:`rank` never asks for.
        """
        top_k = positive_int("top_k", top_k)
        if not scores.shape == chunk_ids.shape == parents.shape or scores.ndim != 2:
            raise ConfigurationError(
                f"rank_batch needs three 2-D arrays of one shape, got {scores.shape}, {chunk_ids.shape}, "
                f"{parents.shape}"
            )
        n, width = scores.shape
        if n == 0 or available <= 0:
            return [[] for _ in range(n)]  # as rank: nothing to fetch
        if not self._asks_for(width, top_k, available):
            raise ConfigurationError(
                f"rank_batch got {width} hits per query; rank asks for min(available={available}, "
                f"top_k * overfetch = {top_k * self.overfetch}) doubled any number of times"
            )
        rows_at_once = max(1, FOLD_HITS // max(1, width))
        out: list[list[ParentMatch] | None] = []
        for start in range(0, n, rows_at_once):
            block = slice(start, start + rows_at_once)
            out += self._rank_rows(
                scores[block], chunk_ids[block], parents[block], top_k, available, parent_id, details, records
            )
        return out

    def _rank_rows(
        self,
        scores: np.ndarray,
        chunk_ids: np.ndarray,
        parents: np.ndarray,
        top_k: int,
        available: int,
        parent_id: Callable[[int], str],
        details: Callable[[np.ndarray], ChunkDetails],
        records: Callable[[Iterable[int]], Mapping[int, ChunkRecord]],
    ) -> list[list[ParentMatch] | None]:
        """:meth:`rank_batch` of rows whose hits are folded at once."""
        n, width = scores.shape
        valid = parents >= 0
        rows = np.nonzero(valid)[0]
        flat_scores, flat_ids, flat_codes = scores[valid], chunk_ids[valid], parents[valid]
        folded = self._fold_rows(flat_scores, flat_ids, flat_codes, rows)
        fetched = valid.sum(axis=1)
        seen = np.bincount(folded.group_rows[folded.passing], minlength=n)
        done = (seen >= top_k) | (width >= available) | (fetched < width)
        if self._stops_at_floor():
            last = np.full(n, np.inf)
            has = fetched > 0
            last[has] = flat_scores[np.cumsum(fetched)[has] - 1]
            done |= last < float(self.min_score)  # type: ignore[arg-type]
        rankings = self._rankings(folded, n, parent_id)
        taken = [ranking[:top_k] if done[r] else [] for r, ranking in enumerate(rankings)]
        built = self._matches_of_details(
            folded, [g for row in taken for g in row], flat_scores, flat_ids, parent_id, details
        )
        out: list[list[ParentMatch] | None] = []
        at = 0
        for r in range(n):
            if not done[r]:
                out.append(None)
            elif built is not None:
                out.append(built[at : at + len(taken[r])])
            else:  # some details are unknown: this query's own fold, which reads the records it needs
                keep = valid[r]
                hits = HitArrays(
                    scores[r][keep], chunk_ids[r][keep], parents[r][keep], parent_id, records, details=details
                )
                out.append(self.fold(hits, top_k))
            at += len(taken[r])
        return out

    def _first_depth(self, top_k: int, available: int) -> int:
        """How many hits :meth:`rank` asks for first: ``top_k * overfetch``, at most ``available``."""
        return min(available, top_k * self.overfetch)

    def _asks_for(self, width: int, top_k: int, available: int) -> bool:
        """Whether :meth:`rank` asks for ``width`` hits at some point: ``top_k * overfetch`` doubled, capped at
        ``available``."""
        first = self._first_depth(top_k, available)
        if width == first or (width == available and available > 0):
            return True
        ratio, rest = divmod(width, first) if first > 0 else (0, 1)
        return rest == 0 and ratio > 1 and ratio & (ratio - 1) == 0 and width < available

    def rank(self, fetch: FetchHits, top_k: int, *, available: int) -> list[ParentMatch]:
        """The ``top_k`` best parents, fetching more chunks until enough distinct parents are seen.

        Args:
            fetch: returns the best ``k`` chunk hits for the query (a list of :class:`Hit` or :class:`HitArrays`).
            top_k: parents wanted.
            available: chunks in the index (upper bound for ``k``).
        """
        top_k = positive_int("top_k", top_k)
        if available <= 0:
            return []
        k = self._first_depth(top_k, available)
        while True:
            hits = fetch(k)
            if isinstance(hits, HitArrays):
                folded = self._fold_hits(hits)
                seen, got = int(folded.passing.sum()), hits.fetched
                last = float(hits.scores[-1]) if got else None
            else:
                scored = self._scored(hits)
                seen, got = len(scored), len(hits)
                last = hits[-1].score if hits else None
            if seen >= top_k or k >= available or got < k or self._below_floor(last):
                if isinstance(hits, HitArrays):
                    return self._matches_of_arrays(hits, folded, top_k)
                return self._matches(scored, top_k)
            logger.debug("only %d parents in %d chunks; fetching %d", seen, k, min(available, 2 * k))
            k = min(available, 2 * k)

    def _below_floor(self, last_score: float | None) -> bool:
        """True when no unseen parent can reach ``min_score``.

        Unseen chunks score at most the last hit's score, and max and mean-of-top-n
        never exceed a parent's best chunk; a sum can, so it never stops early.
        """
        return self._stops_at_floor() and last_score is not None and last_score < self.min_score  # type: ignore[operator]

    def _stops_at_floor(self) -> bool:
        """Whether a last hit below ``min_score`` ends the search (see :meth:`_below_floor`)."""
        if self.min_score is None or isinstance(self.aggregator, SumAggregator):
            return False
        return isinstance(self.aggregator, (MaxAggregator, MeanTopNAggregator))


def _grouping_order(
    scores: np.ndarray, ids: np.ndarray, codes: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, bool]:
    """Hit positions ordered by query row, then parent code, then best score first, then lower chunk id; and
    whether the hits came strictly in index order (rows in order, each strictly best first: no ties).

    Hits in index order (rows in order, each best first, equal scores by lower id first, as
    :class:`~crossscale.index.ChunkIndex` returns them) need only a stable sort by ``(row, parent)``, a tenth of the
    general four-key sort.
    """
    if len(scores) > 1 and codes.min() >= 0:
        row_step, score_step = np.diff(rows), np.diff(scores)
        same_row = row_step == 0
        if bool(((row_step > 0) | (same_row & (score_step < 0))).all()):
            strictly = True
        else:
            strictly = False
            tie_ok = (score_step < 0) | ((score_step == 0) & (np.diff(ids) > 0))
            if not bool(((row_step > 0) | (same_row & tie_ok)).all()):
                return np.lexsort((ids, -scores.astype(np.float64), codes, rows)), False
        del row_step, score_step, same_row  # a batch's hits number millions: hold one temporary at a time
        key = rows.astype(np.int64) * (int(codes.max()) + 1)
        key += codes
        return np.argsort(key, kind="stable"), strictly
    return np.lexsort((ids, -scores.astype(np.float64), codes, rows)), False


def _fused(boxes: np.ndarray, weights: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The ``weights``-weighted mean box of each run of ``boxes`` beginning at ``starts`` (runs non-empty), rounded
    to whole pixels and at least one pixel wide and high: int64 ``(len(starts), 4)``.

    One implementation for every fold, so that a parent's box does not depend on which path built it.
    """
    total = np.add.reduceat(weights, starts)
    out = np.empty((len(starts), 4), np.int64)
    for i in range(4):
        column = np.ascontiguousarray(boxes[:, i] * weights)
        out[:, i] = np.round(np.add.reduceat(column, starts) / total)
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1)
    return out


class _Folded(NamedTuple):
    """The numpy fold of one or more queries' hits.

    ``order``: hit positions grouped by query and parent, best first within each group; per group: ``starts``
    (where it begins in ``order``), ``sizes``, ``near`` (how many of its first hits the box needs),
    ``parent_scores``, ``group_rows`` (its query), ``group_codes`` (its parent), ``passing`` (``min_score``) and,
    where parents rank in the order they first appear among the hits, ``first_hits`` (that position).
    """

    order: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    near: np.ndarray
    parent_scores: np.ndarray
    group_rows: np.ndarray
    group_codes: np.ndarray
    passing: np.ndarray
    first_hits: np.ndarray | None = None

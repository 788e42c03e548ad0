"""Fold chunk hits into a ranked list of parent images (``hits → parents``)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
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
from crossscale.types import Box, Hit, HitArrays, ParentMatch

logger = logging.getLogger(__name__)

__all__ = ["BOX_MODES", "ParentRanker"]

BOX_MODES = ("best", "fusion")


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
        folded with numpy, reading records only for the parents returned; the result is the same.
        """
        if isinstance(hits, HitArrays):
            return self._matches_of_arrays(hits, self._scored_arrays(hits), top_k)
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
    def _scored_arrays(self, hits: HitArrays) -> _Folded:
        """The parents of ``hits`` passing ``min_score``, ranked as :meth:`_scored` ranks them, without records."""
        if hits.fetched == 0:
            return _Folded([], [], [], [], [], [])
        scores = hits.scores.astype(np.float64)
        order = np.lexsort((hits.chunk_ids, -scores, hits.parents))  # by parent; best first, then lower id
        grouped = hits.parents[order]
        in_order = scores[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        sizes = np.diff(np.append(starts, len(order)))
        if self._grouped is not None:
            parent_scores = self._grouped.over_groups(in_order, starts)
        else:
            bounds = np.append(starts, len(order))
            parent_scores = np.array([self.aggregator(in_order[a:b]) for a, b in itertools.pairwise(bounds)])
        if self.box == "best":
            near = np.ones(len(starts), np.int64)
        else:  # within a group (best first) the hits near the best one are a prefix
            close = in_order >= np.repeat(in_order[starts], sizes) - self.box_margin
            near = np.add.reduceat(close.astype(np.int64), starts)
        candidates = np.arange(len(starts))
        if self.min_score is not None:
            candidates = candidates[parent_scores >= self.min_score]
        ranked = candidates[np.argsort(-parent_scores[candidates], kind="stable")]
        ranking = ranked.tolist()
        ranked_scores = parent_scores[ranked]
        if np.any(ranked_scores[1:] == ranked_scores[:-1]):  # equal scores: the parent id decides, as in _scored
            ranking.sort(key=lambda g: (-parent_scores[g], hits.parent_id(int(grouped[starts[g]]))))
        return _Folded(order.tolist(), starts.tolist(), sizes.tolist(), near.tolist(), parent_scores.tolist(), ranking)

    def _matches_of_arrays(self, hits: HitArrays, folded: _Folded, top_k: int | None) -> list[ParentMatch]:
        """ParentMatches of the first ``top_k`` ranked parents, reading the records of their near-best chunks only.

        A parent whose best chunk's record is gone (deleted since the index was loaded) is skipped for the next.
        """
        want = len(folded.ranking) if top_k is None else top_k
        order = folded.order
        matches: list[ParentMatch] = []
        done = 0
        while done < len(folded.ranking) and len(matches) < want:
            take = folded.ranking[done : done + want - len(matches)]
            done += len(take)
            spans = [(folded.starts[g], folded.starts[g] + folded.near[g]) for g in take]
            found = hits.hits_at([p for a, b in spans for p in order[a:b]])
            for g, (a, b) in zip(take, spans, strict=True):
                if order[a] not in found:
                    continue
                group = [found[p] for p in order[a:b] if p in found]
                matches.append(self._match(folded.parent_scores[g], group[0].parent_id, group, folded.sizes[g]))
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
        weights = [max(h.score, 1e-6) for h in near]
        boxes = [h.box.as_tuple() for h in near]
        total = sum(weights)
        x0, y0, x1, y1 = (sum(w * b[i] for w, b in zip(weights, boxes, strict=True)) / total for i in range(4))
        return Box(round(x0), round(y0), max(round(x1), round(x0) + 1), max(round(y1), round(y0) + 1))

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
        k = min(available, top_k * self.overfetch)
        while True:
            hits = fetch(k)
            if isinstance(hits, HitArrays):
                folded = self._scored_arrays(hits)
                seen, got = len(folded.ranking), hits.fetched
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
        if self.min_score is None or last_score is None or isinstance(self.aggregator, SumAggregator):
            return False
        if not isinstance(self.aggregator, (MaxAggregator, MeanTopNAggregator)):
            return False
        return last_score < self.min_score


class _Folded(NamedTuple):
    """The numpy fold of one query's :class:`HitArrays`, as lists (they are read item by item).

    ``order``: hit positions grouped by parent, best first within each group; per group: ``starts`` (where it
    begins in ``order``), ``sizes``, ``near`` (how many of its first hits the box needs), ``parent_scores``;
    ``ranking``: the groups passing ``min_score``, best first.
    """

    order: list[int]
    starts: list[int]
    sizes: list[int]
    near: list[int]
    parent_scores: list[float]
    ranking: list[int]

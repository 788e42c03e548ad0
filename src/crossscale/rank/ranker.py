"""Fold chunk hits into a ranked list of parent images (``hits → parents``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from crossscale._checks import number_in, optional_finite, positive_int
from crossscale.errors import ConfigurationError
from crossscale.protocols import FetchHits
from crossscale.rank.aggregators import (
    Aggregator,
    MaxAggregator,
    MeanTopNAggregator,
    SumAggregator,
    create_aggregator,
)
from crossscale.types import Box, Hit, ParentMatch

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
        self.overfetch = positive_int("overfetch", overfetch)
        self.min_score = optional_finite("min_score", min_score)

    def __repr__(self) -> str:
        return (
            f"ParentRanker(aggregator={self.aggregator.name!r}, overfetch={self.overfetch}, "
            f"min_score={self.min_score!r}, box={self.box!r}, box_margin={self.box_margin})"
        )

    def fold(self, hits: Sequence[Hit], top_k: int | None = None) -> list[ParentMatch]:
        """Group hits by parent, score each parent, and sort (score desc, then parent id).

        Pure: the same hits give the same list. ``top_k=None`` keeps all parents.
        """
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
            ParentMatch(
                parent_id=parent_id,
                score=score,
                box=self._box(group),
                kind=group[0].kind,
                label=group[0].label,
                chunk_score=group[0].score,
                chunk_id=group[0].chunk_id,
                n_hits=len(group),
            )
            for score, parent_id, group in (scored if top_k is None else scored[:top_k])
        ]

    def _box(self, group: list[Hit]) -> Box:
        """Where the query is in the parent: the best chunk's box, or a fusion of the near-best chunks.

        ``fusion``: the score-weighted mean box of the chunks scoring within ``box_margin`` of the best
        that overlap it. It localises better than the best chunk alone, and better than the intersection of
        those chunks (docs/benchmarks.md).
        """
        best = group[0]
        if self.box == "best":
            return best.box
        near = [h for h in group if h.score >= best.score - self.box_margin and h.box.intersection_area(best.box) > 0]
        weights = [max(h.score, 1e-6) for h in near]
        total = sum(weights)
        x0, y0, x1, y1 = (
            sum(w * h.box.as_tuple()[i] for w, h in zip(weights, near, strict=True)) / total for i in range(4)
        )
        return Box(round(x0), round(y0), max(round(x1), round(x0) + 1), max(round(y1), round(y0) + 1))

    def rank(self, fetch: FetchHits, top_k: int, *, available: int) -> list[ParentMatch]:
        """The ``top_k`` best parents, fetching more chunks until enough distinct parents are seen.

        Args:
            fetch: returns the best ``k`` chunk hits for the query.
            top_k: parents wanted.
            available: chunks in the index (upper bound for ``k``).
        """
        top_k = positive_int("top_k", top_k)
        if available <= 0:
            return []
        k = min(available, top_k * self.overfetch)
        while True:
            hits = fetch(k)
            scored = self._scored(hits)
            if len(scored) >= top_k or k >= available or len(hits) < k or self._below_floor(hits):
                return self._matches(scored, top_k)
            logger.debug("only %d parents in %d chunks; fetching %d", len(scored), k, min(available, 2 * k))
            k = min(available, 2 * k)

    def _below_floor(self, hits: Sequence[Hit]) -> bool:
        """True when no unseen parent can reach ``min_score``.

        Unseen chunks score at most the last hit's score, and max and mean-of-top-n
        never exceed a parent's best chunk; a sum can, so it never stops early.
        """
        if self.min_score is None or not hits or isinstance(self.aggregator, SumAggregator):
            return False
        if not isinstance(self.aggregator, (MaxAggregator, MeanTopNAggregator)):
            return False
        return hits[-1].score < self.min_score

"""Re-score the top parents at the query's scale, and find the extent of the match."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from crossscale._checks import number_in, numbers_in, positive_int
from crossscale._vectors import embed
from crossscale.errors import ConfigurationError
from crossscale.protocols import Encoder, ParentLoader
from crossscale.types import Box, ParentMatch, Query

__all__ = ["RegionRefiner"]

_MIN_SIDE = 8
_SHIFTS = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy)


@dataclasses.dataclass(frozen=True)
class _Scored:
    score: float
    box: Box


class RegionRefiner:
    """Re-scores the ``top_n`` best parents by encoding crops around their match box, and finds the match's extent.

    A chunk is a fixed tile; the object can be smaller, shifted, or of another aspect ratio. For each of the
    top parents the refiner searches in three passes, each encoding a handful of crops and comparing them with
    the query:

    1. *size*: crops with the query's aspect ratio, ``scales`` times the match box's size, on its centre;
    2. *position*: the best of those shifted by ``shift`` of its size in eight directions;
    3. *extent*: the best crop scores highest when it lies inside the object (the query is usually a part of
       it), so its box is too small. The refiner grows it, first as a whole (``grow``), then side by side (each
       of ``side_steps``), and keeps every growth whose crop still scores within ``extent_margin`` of the
       best: a crop that covers the whole object matches about as well as one inside it, one that adds
       background does not.

    If the best crop of passes 1 and 2 scores above the match's best chunk (``chunk_score``), the match takes
    its score rise (under the default ``max`` aggregator: the crop's score) and the box grown in pass 3.
    The parents are then re-sorted. Costs up to ``top_n * (len(scales) + 8 + len(grow) + 4 * len(side_steps))``
    encoder passes per query (66 by default). docs/benchmarks.md has the measurements behind each pass.

    Args:
        encoder: the workspace's encoder (anything with ``encode(images) -> rows``; rows are L2-normalised here).
        top_n: how many of the best parents are re-scored.
        scales: crop sizes relative to the match box's size (geometric mean of its sides).
        shift: the position pass's step, as a fraction of the crop's size.
        grow: the extent pass's whole-box growth factors (of the side length); ``()`` skips it.
        side_steps: the extent pass's per-side growth steps, as fractions of the box's size; ``()`` skips it.
        extent_margin: how far below the best score a grown crop may score and still be kept; 0 keeps only
            growths that score at least as well.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        top_n: int = 3,
        scales: Sequence[float] = (0.5, 0.7, 1.0, 1.4),
        shift: float = 0.2,
        grow: Sequence[float] = (1.15, 1.3),
        side_steps: Sequence[float] = (0.2, 0.1),
        extent_margin: float = 0.03,
    ) -> None:
        self.encoder = encoder
        self.top_n = positive_int("top_n", top_n)
        self.scales = numbers_in("scales", scales, 0.05, 4.0)
        self.shift = number_in("shift", shift, 0.0, 1.0, low_open=True)
        self.grow = numbers_in("grow", grow, 1.0, 4.0, low_open=True, empty=True)
        self.side_steps = numbers_in("side_steps", side_steps, 0.0, 1.0, low_open=True, empty=True)
        self.extent_margin = number_in("extent_margin", extent_margin, 0.0, 1.0)

    def __repr__(self) -> str:
        return (
            f"RegionRefiner(top_n={self.top_n}, scales={self.scales}, shift={self.shift}, grow={self.grow}, "
            f"side_steps={self.side_steps}, extent_margin={self.extent_margin})"
        )

    @staticmethod
    def _crop_box(cx: float, cy: float, w: float, h: float, width: int, height: int) -> Box | None:
        w, h = min(w, width), min(h, height)  # keep the shape inside the image by sliding, not shrinking
        x0 = min(max(cx - w / 2, 0.0), width - w)
        y0 = min(max(cy - h / 2, 0.0), height - h)
        try:
            box = Box.from_floats(x0, y0, x0 + w, y0 + h, width=width, height=height)
        except ConfigurationError:
            return None
        return box if box.width >= _MIN_SIDE and box.height >= _MIN_SIDE else None

    @classmethod
    def _around(cls, box: Box, factor: float, aspect: float, width: int, height: int) -> Box | None:
        """A crop of ``aspect`` (w/h) on ``box``'s centre, ``factor`` times its size (geometric mean of its sides)."""
        side = math.sqrt(box.area)
        w, h = side * factor * math.sqrt(aspect), side * factor / math.sqrt(aspect)
        return cls._crop_box((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, w, h, width, height)

    def _score(self, query: np.ndarray, image: Image.Image, boxes: Sequence[Box | None]) -> list[_Scored]:
        unique = list(dict.fromkeys(b for b in boxes if b is not None))
        if not unique:
            return []
        # the same embed() as indexing: crop scores must compare with chunk scores
        vectors = embed(self.encoder, [image.crop(b.as_tuple()) for b in unique])
        return [_Scored(float(s), b) for s, b in zip(vectors @ query, unique, strict=True)]

    def _extent(self, query: np.ndarray, image: Image.Image, best: _Scored, aspect: float) -> Box:
        """Pass 3: ``best``'s box grown while the match holds.

        Growths are held to the highest score seen so far (``top``). It moves the box only: the match's score
        stays that of passes 1 and 2 (letting a grown crop's higher score reorder the top parents made the
        quality benchmark worse; docs/benchmarks.md).
        """
        width, height = image.size
        grown = self._score(query, image, [self._around(best.box, g, aspect, width, height) for g in self.grow])
        top = max([best.score] + [c.score for c in grown])
        kept = [c for c in [best, *grown] if c.score >= top - self.extent_margin]  # never empty: top is kept
        box = max(kept, key=lambda c: c.box.area).box
        for step in self.side_steps:
            dw, dh = step * box.width, step * box.height
            x0, y0, x1, y1 = box.x0, box.y0, box.x1, box.y1
            moves = [(x0 - dw, y0, x1, y1), (x0, y0, x1 + dw, y1), (x0, y0 - dh, x1, y1), (x0, y0, x1, y1 + dh)]
            candidates = [Box.from_floats(*m, width=width, height=height) for m in moves]
            sides = self._score(query, image, [c for c in candidates if c != box])
            # each side is judged against the best score before this round, as the box it grows from was
            taken = [c.box for c in sides if c.score >= top - self.extent_margin]
            top = max([top] + [c.score for c in sides])
            if taken:
                box = Box(
                    min(b.x0 for b in [box, *taken]),
                    min(b.y0 for b in [box, *taken]),
                    max(b.x1 for b in [box, *taken]),
                    max(b.y1 for b in [box, *taken]),
                )
        return box

    def _refine_one(self, query: np.ndarray, aspect: float, match: ParentMatch, image: Image.Image) -> ParentMatch:
        width, height = image.size
        sized = self._score(query, image, [self._around(match.box, s, aspect, width, height) for s in self.scales])
        if not sized:
            return match
        best = max(sized, key=lambda c: c.score)
        b = best.box
        bx, by = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
        moved = self._score(
            query,
            image,
            [
                self._crop_box(
                    bx + dx * self.shift * b.width, by + dy * self.shift * b.height, b.width, b.height, width, height
                )
                for dx, dy in _SHIFTS
            ],
        )
        best = max([best, *moved], key=lambda c: c.score)
        if best.score > match.chunk_score:
            # the crop stands in for the best chunk: the aggregate rises by what it adds (under "max", the
            # score becomes the crop's; under "sum" or "mean_topN" it stays on the aggregator's scale)
            box = self._extent(query, image, best, aspect)
            return dataclasses.replace(match, score=match.score + best.score - match.chunk_score, box=box)
        return match

    def refine(
        self, query: Query, matches: Sequence[ParentMatch], load: ParentLoader, *legacy: Any
    ) -> list[ParentMatch]:
        """``matches`` with the first ``top_n`` re-scored (score and box), re-sorted by score.

        Crops take the query image's aspect ratio (a query without an image, e.g. text, takes each match box's
        own). ``load`` returns a parent's image, or ``None`` if the parent is gone (deleted by a writer since
        the search ranked it); such a match is dropped.
        """
        if not isinstance(query, Query):
            # crossscale 0.1: refine(query_vector, query_size, matches, load)
            warnings.warn(
                "RegionRefiner.refine(query_vector, query_size, matches, load) is deprecated; "
                "use refine(Query(vector, image), matches, load)",
                DeprecationWarning,
                stacklevel=2,
            )
            size: tuple[int, int] = matches  # type: ignore[assignment]
            query = Query(np.asarray(query, dtype=np.float32).reshape(-1), Image.new("RGB", size))
            matches, load = load, legacy[0]  # type: ignore[assignment]
        vector = np.asarray(query.vector, dtype=np.float32).reshape(-1)
        refined: list[ParentMatch] = []
        for match in matches[: self.top_n]:
            image = load(match.parent_id)
            if image is not None:
                aspect = query.aspect or match.box.width / match.box.height
                refined.append(self._refine_one(vector, aspect, match, image))
        refined += list(matches[self.top_n :])
        return sorted(refined, key=lambda m: (-m.score, m.parent_id))

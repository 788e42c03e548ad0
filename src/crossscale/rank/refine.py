"""Re-score the top parents at the query's scale, and find the extent of the match."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
from PIL import Image

from crossscale._checks import number_in, numbers_in, positive_int
from crossscale._vectors import embed, unit_rows
from crossscale.errors import ConfigurationError, VectorError
from crossscale.protocols import BoxMap, Encoder, MapEncoder, ParentLoader
from crossscale.types import Box, ParentMatch, Query

__all__ = ["MapRefiner", "RegionRefiner"]

_MIN_SIDE = 8
_SHIFTS = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy)


@dataclasses.dataclass(frozen=True)
class _Scored:
    score: float
    box: Box


_Scorer = Callable[[Sequence["Box | None"]], list[_Scored]]


def _slid(cx: float, cy: float, w: float, h: float, bounds: Box) -> Box | None:
    """A ``w x h`` box on ``(cx, cy)``, slid (not shrunk) to lie inside ``bounds``; ``None`` if under 8 px a side."""
    w, h = min(w, bounds.width), min(h, bounds.height)
    x0 = min(max(cx - w / 2, bounds.x0), bounds.x1 - w)
    y0 = min(max(cy - h / 2, bounds.y0), bounds.y1 - h)
    try:
        box = Box.from_floats(x0, y0, x0 + w, y0 + h, width=bounds.x1, height=bounds.y1)
    except ConfigurationError:
        return None
    return box if box.width >= _MIN_SIDE and box.height >= _MIN_SIDE else None


def _around(box: Box, factor: float, aspect: float, bounds: Box) -> Box | None:
    """A box of ``aspect`` (w/h) on ``box``'s centre, ``factor`` times its size (geometric mean of its sides)."""
    side = math.sqrt(box.area)
    w, h = side * factor * math.sqrt(aspect), side * factor / math.sqrt(aspect)
    return _slid((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, w, h, bounds)


def _clipped(x0: float, y0: float, x1: float, y1: float, bounds: Box) -> Box:
    """The box rounded outwards and clipped to ``bounds`` (which it overlaps)."""
    box = Box.from_floats(x0, y0, x1, y1, width=bounds.x1, height=bounds.y1)
    return Box(max(box.x0, bounds.x0), max(box.y0, bounds.y0), box.x1, box.y1)


def _extent(
    score: _Scorer,
    best: _Scored,
    aspect: float,
    bounds: Box,
    grow: Sequence[float],
    side_steps: Sequence[float],
    margin: float,
) -> Box:
    """``best``'s box grown while the match holds: first as a whole (``grow``), then side by side (each of
    ``side_steps``), keeping every growth that scores within ``margin`` of the highest score seen so far
    (``top``). It moves the box only: a grown crop's higher score reordering the top parents made the quality
    benchmark worse (docs/benchmarks.md). ``score`` must score ``best`` on the same scale as ``best.score``.
    """
    grown = score([_around(best.box, g, aspect, bounds) for g in grow])
    top = max([best.score] + [c.score for c in grown])
    kept = [c for c in [best, *grown] if c.score >= top - margin]  # never empty: top is kept
    box = max(kept, key=lambda c: c.box.area).box
    for step in side_steps:
        dw, dh = step * box.width, step * box.height
        x0, y0, x1, y1 = box.x0, box.y0, box.x1, box.y1
        moves = [(x0 - dw, y0, x1, y1), (x0, y0, x1 + dw, y1), (x0, y0 - dh, x1, y1), (x0, y0, x1, y1 + dh)]
        candidates = [_clipped(*m, bounds) for m in moves]
        sides = score([c for c in candidates if c != box])
        # each side is judged against the best score before this round, as the box it grows from was
        taken = [c.box for c in sides if c.score >= top - margin]
        top = max([top] + [c.score for c in sides])
        if taken:
            box = Box(
                min(b.x0 for b in [box, *taken]),
                min(b.y0 for b in [box, *taken]),
                max(b.x1 for b in [box, *taken]),
                max(b.y1 for b in [box, *taken]),
            )
    return box


class _TopParentRefiner:
    """What both refiners share: the settings of the size and extent passes, crop scoring, and the walk over the
    top ``top_n`` parents."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        top_n: int,
        scales: Sequence[float],
        grow: Sequence[float],
        side_steps: Sequence[float],
        extent_margin: float,
    ) -> None:
        self.encoder = encoder
        self.top_n = positive_int("top_n", top_n)
        self.scales = numbers_in("scales", scales, 0.05, 4.0)
        self.grow = numbers_in("grow", grow, 1.0, 4.0, low_open=True, empty=True)
        self.side_steps = numbers_in("side_steps", side_steps, 0.0, 1.0, low_open=True, empty=True)
        self.extent_margin = number_in("extent_margin", extent_margin, 0.0, 1.0)

    def _score(self, query: np.ndarray, image: Image.Image, boxes: Sequence[Box | None]) -> list[_Scored]:
        """Crops of ``boxes`` (``None`` skipped, duplicates once) scored against ``query``."""
        unique = list(dict.fromkeys(b for b in boxes if b is not None))
        if not unique:
            return []
        # the same embed() as indexing: crop scores must compare with chunk scores
        vectors = embed(self.encoder, [image.crop(b.as_tuple()) for b in unique])
        return [_Scored(float(s), b) for s, b in zip(vectors @ query, unique, strict=True)]

    def _sized(self, query: np.ndarray, aspect: float, match: ParentMatch, image: Image.Image) -> _Scored | None:
        """Pass 1, *size*: the best of the crops with the query's aspect ratio, ``scales`` times the match box's
        size, on its centre."""
        bounds = Box(0, 0, image.width, image.height)
        sized = self._score(query, image, [_around(match.box, s, aspect, bounds) for s in self.scales])
        return max(sized, key=lambda c: c.score) if sized else None

    def _refine_one(self, query: np.ndarray, aspect: float, match: ParentMatch, image: Image.Image) -> ParentMatch:
        raise NotImplementedError

    def _refine(self, query: Query, matches: Sequence[ParentMatch], load: ParentLoader) -> list[ParentMatch]:
        vector = np.asarray(query.vector, dtype=np.float32).reshape(-1)
        refined: list[ParentMatch] = []
        for match in matches[: self.top_n]:
            image = load(match.parent_id)
            if image is not None:
                aspect = query.aspect or match.box.width / match.box.height
                refined.append(self._refine_one(vector, aspect, match, image))
        refined += list(matches[self.top_n :])
        return sorted(refined, key=lambda m: (-m.score, m.parent_id))

    @staticmethod
    def _raised(match: ParentMatch, best: _Scored, box: Box) -> ParentMatch:
        """``match`` with the crop ``best`` standing in for its best chunk: the aggregate rises by what it adds
        (under "max", the score becomes the crop's; under "sum" or "mean_topN" it stays on the aggregator's
        scale), and the box becomes ``box``."""
        return dataclasses.replace(match, score=match.score + best.score - match.chunk_score, box=box)


class RegionRefiner(_TopParentRefiner):
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
        super().__init__(
            encoder, top_n=top_n, scales=scales, grow=grow, side_steps=side_steps, extent_margin=extent_margin
        )
        self.shift = number_in("shift", shift, 0.0, 1.0, low_open=True)

    def __repr__(self) -> str:
        return (
            f"RegionRefiner(top_n={self.top_n}, scales={self.scales}, shift={self.shift}, grow={self.grow}, "
            f"side_steps={self.side_steps}, extent_margin={self.extent_margin})"
        )

    def _refine_one(self, query: np.ndarray, aspect: float, match: ParentMatch, image: Image.Image) -> ParentMatch:
        bounds = Box(0, 0, image.width, image.height)
        best = self._sized(query, aspect, match, image)
        if best is None:
            return match
        b = best.box
        bx, by = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
        step_x, step_y = self.shift * b.width, self.shift * b.height
        moved = self._score(
            query, image, [_slid(bx + dx * step_x, by + dy * step_y, b.width, b.height, bounds) for dx, dy in _SHIFTS]
        )
        best = max([best, *moved], key=lambda c: c.score)
        if best.score <= match.chunk_score:
            return match
        box = _extent(
            lambda boxes: self._score(query, image, boxes),
            best,
            aspect,
            bounds,
            self.grow,
            self.side_steps,
            self.extent_margin,
        )
        return self._raised(match, best, box)

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
        return self._refine(query, matches, load)


class MapRefiner(_TopParentRefiner):
    """Re-scores the ``top_n`` best parents as :class:`RegionRefiner` does, with most of its crops replaced by boxes
    pooled from one forward pass per parent.

    For each of the top parents:

    1. *size*: :class:`RegionRefiner`'s first pass, crops at ``scales`` of the match box's size (crop vectors
       compare with chunk vectors, so the scale is chosen on them);
    2. one pass of the encoder over a window ``window`` times that crop's size around it, at the crop's scale
       (:meth:`crossscale.protocols.MapEncoder.window_map`);
    3. *position*: the crop shifted by every multiple of ``step`` of its size up to ``reach`` in x and y (48 boxes
       by default), each pooled from the map. If the best of them scores above the unshifted box on the map, its
       crop is encoded and taken when it scores above the first pass's best;
    4. *extent*: :class:`RegionRefiner`'s third pass, every growth pooled from the same map and judged against
       the chosen box's score on the map.

    The score rises as :class:`RegionRefiner`'s, by crop scores. A parent costs ``len(scales)`` crops, one pass
    over about ``window²`` crops' pixels and at most one more crop: 9 crops' worth by default, where
    :class:`RegionRefiner` encodes up to 22.

    Args:
        encoder: the workspace's encoder; it must have ``window_map`` (:class:`crossscale.protocols.MapEncoder`,
            e.g. ``create_encoder("efficientnet-lite0")``).
        top_n, scales, grow, side_steps, extent_margin: as for :class:`RegionRefiner`.
        reach: the farthest shift, as a fraction of the crop's size, in x and in y.
        step: the shifts' spacing, as a fraction of the crop's size.
        window: the mapped window's size, as a multiple of the crop's (slid, then clipped, to the image).

    Raises:
        ConfigurationError: the encoder has no ``window_map``, or a setting is out of range.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        top_n: int = 3,
        scales: Sequence[float] = (0.5, 0.7, 1.0, 1.4),
        reach: float = 0.3,
        step: float = 0.1,
        window: float = 2.0,
        grow: Sequence[float] = (1.15, 1.3),
        side_steps: Sequence[float] = (0.2, 0.1),
        extent_margin: float = 0.03,
    ) -> None:
        if not isinstance(encoder, MapEncoder):
            raise ConfigurationError(
                f"MapRefiner needs an encoder with window_map(image, window, crop_size) "
                f"(crossscale.protocols.MapEncoder); {encoder!r} has none: use RegionRefiner"
            )
        super().__init__(
            encoder, top_n=top_n, scales=scales, grow=grow, side_steps=side_steps, extent_margin=extent_margin
        )
        self.reach = number_in("reach", reach, 0.0, 1.0)
        self.step = number_in("step", step, 0.0, 1.0, low_open=True)
        self.window = number_in("window", window, 1.0, 4.0)
        n = math.floor(self.reach / self.step + 1e-9)
        self._offsets = tuple(
            (i * self.step, j * self.step) for i in range(-n, n + 1) for j in range(-n, n + 1) if i or j
        )

    def __repr__(self) -> str:
        return (
            f"MapRefiner(top_n={self.top_n}, scales={self.scales}, reach={self.reach}, step={self.step}, "
            f"window={self.window}, grow={self.grow}, side_steps={self.side_steps}, "
            f"extent_margin={self.extent_margin})"
        )

    @staticmethod
    def _on_map(query: np.ndarray, box_map: BoxMap, boxes: Sequence[Box | None]) -> list[_Scored]:
        unique = list(dict.fromkeys(b for b in boxes if b is not None))
        if not unique:
            return []
        rows = np.asarray(box_map.pool(unique), dtype=np.float32)
        if rows.shape != (len(unique), query.shape[0]):
            raise VectorError(
                f"the encoder's window map pooled {len(unique)} boxes into shape {rows.shape}; "
                f"expected ({len(unique)}, {query.shape[0]})"
            )
        if not np.isfinite(rows).all():
            raise VectorError("the encoder's window map returned NaN or inf")
        # an all-zero box scores 0
        return [_Scored(float(s), b) for s, b in zip(unit_rows(rows) @ query, unique, strict=True)]

    def _refine_one(self, query: np.ndarray, aspect: float, match: ParentMatch, image: Image.Image) -> ParentMatch:
        bounds = Box(0, 0, image.width, image.height)
        best = self._sized(query, aspect, match, image)
        if best is None:
            return match
        b = best.box
        window = _around(b, self.window, b.width / b.height, bounds) or bounds
        box_map = cast(MapEncoder, self.encoder).window_map(image, window, (b.width, b.height))

        def on_map(boxes: Sequence[Box | None]) -> list[_Scored]:
            return self._on_map(query, box_map, boxes)

        [chosen] = on_map([b])  # the first pass's best, scored on the map
        bx, by = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
        moved = on_map(
            [_slid(bx + dx * b.width, by + dy * b.height, b.width, b.height, window) for dx, dy in self._offsets]
        )
        top = max(moved, key=lambda c: c.score, default=None)
        if top is not None and top.box != b and top.score > chosen.score:
            [crop] = self._score(query, image, [top.box])
            if crop.score > best.score:
                best, chosen = crop, top
        if best.score <= match.chunk_score:
            return match
        box = _extent(on_map, chosen, aspect, window, self.grow, self.side_steps, self.extent_margin)
        return self._raised(match, best, box)

    def refine(self, query: Query, matches: Sequence[ParentMatch], load: ParentLoader) -> list[ParentMatch]:
        """``matches`` with the first ``top_n`` re-scored (score and box), re-sorted by score.

        Crops take the query image's aspect ratio (a query without an image, e.g. text, takes each match box's
        own). ``load`` returns a parent's image, or ``None`` if the parent is gone; such a match is dropped.
        """
        return self._refine(query, matches, load)
